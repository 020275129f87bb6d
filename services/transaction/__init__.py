"""The transaction service: creates and tracks transactions as sagas (issues 3 and 4 build it)."""
