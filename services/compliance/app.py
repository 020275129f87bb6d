"""Composition root of the compliance service."""
import os
from pathlib import Path

from diboas.compliance.v1 import compliance_pb2_grpc
from services.runtime.db import Database
from services.runtime.server import Registration, Runtime
from services.runtime.status import error_domain

from .rules import compliance_file, load_rules
from .service import ComplianceService
from .servicer import ComplianceServicer

MIGRATIONS = Path(__file__).parent / "migrations"


def build(runtime: Runtime) -> list[Registration]:
    rules = load_rules(compliance_file(os.environ))     # a bad file stops the service: one line, file, rule, field
    db = Database(runtime.service.database, MIGRATIONS)
    db.migrate()
    runtime.on_stop.append(db.close)
    return [Registration(compliance_pb2_grpc.add_ComplianceServiceServicer_to_server,
                         ComplianceServicer(ComplianceService(db, rules),
                                            error_domain("compliance", runtime.topology.trust_domain)))]
