// The API reference page: Swagger UI (served by the gateway from the pinned swagger-ui-dist
// package, nothing from the network) over the gateway's own /openapi.json.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#api-reference",
    deepLinking: true,
    persistAuthorization: false,
    validatorUrl: null,           // no call to an online validator
    tryItOutEnabled: false,
  });
});
