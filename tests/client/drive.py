"""Drives the ledger through a client generated from troupe's OpenAPI
document (openapi-python-client): the generated methods, models and error
parsing are used as a client author would use them.

Usage: drive.py BASE_URL TOKEN (the generated package `troupe_client` on
PYTHONPATH). Exits non-zero with a message on the first surprise.
"""

import sys

from troupe_client import AuthenticatedClient
from troupe_client.api.accounts import deposit, get_account, list_entries, open_account, withdraw
from troupe_client.api.actors import list_actors
from troupe_client.api.transfers import get_transfer, start_transfer
from troupe_client.models import (
    AccountView,
    AmountPayload,
    EntriesPage,
    ErrorBody,
    ErrorCode,
    OpenPayload,
    TransferRequest,
    TransferView,
)
from troupe_client.models.list_actors_kind import ListActorsKind


def expect(what, condition):
    if not condition:
        sys.exit(f"unexpected: {what}")


def main(base_url, token):
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)

    for account in ("alice", "bob"):
        opened = open_account.sync_detailed(account, client=client, body=OpenPayload(currency="EUR"))
        expect(f"open {account}: {opened.status_code}", opened.status_code == 201)
        expect(f"open {account} parsed", isinstance(opened.parsed, AccountView))

    moved = deposit.sync_detailed("alice", client=client, body=AmountPayload(amount=1000), idempotency_key="dep-1")
    expect(f"deposit: {moved.status_code}", moved.status_code == 200)
    expect(f"deposit balance: {moved.parsed}", moved.parsed.balance == 1000)
    again = deposit.sync_detailed("alice", client=client, body=AmountPayload(amount=1000), idempotency_key="dep-1")
    expect("a replay says so", again.headers.get("idempotent-replayed") == "true")

    transfer = start_transfer.sync_detailed(
        client=client, body=TransferRequest(id="t-1", from_="alice", to="bob", amount=250)
    )
    expect(f"transfer: {transfer.status_code} {transfer.content!r}", transfer.status_code == 201)
    expect("transfer parsed", isinstance(transfer.parsed, TransferView))
    expect(f"transfer status: {transfer.parsed.status}", str(transfer.parsed.status) == "completed")
    read = get_transfer.sync("t-1", client=client)
    expect(f"transfer read: {read}", isinstance(read, TransferView) and read.amount == 250)

    page = list_entries.sync("alice", client=client, after=0, limit=10)
    expect(f"entries: {page}", isinstance(page, EntriesPage))
    kinds = [str(e.kind) for e in page.entries]
    expect(f"entry kinds: {kinds}", kinds == ["deposit", "transfer_debit"])
    alice = get_account.sync("alice", client=client)
    expect(f"alice: {alice}", alice.balance == 750)

    refused = withdraw.sync_detailed("bob", client=client, body=AmountPayload(amount=10_000))
    expect(f"withdraw too much: {refused.status_code}", refused.status_code == 422)
    expect(f"error parsed: {refused.parsed}", isinstance(refused.parsed, ErrorBody))
    code = refused.parsed.error.code
    expect(f"error code: {code!r}", isinstance(code, ErrorCode) and code == ErrorCode.INSUFFICIENT_FUNDS)
    missing = get_account.sync_detailed("nobody", client=client)
    expect(f"missing: {missing.status_code}", missing.status_code == 404)
    expect("missing parsed", missing.parsed.error.code == ErrorCode.NOT_FOUND)

    listed = list_actors.sync(ListActorsKind.ACCOUNT, client=client, limit=1)
    expect(f"listing: {listed}", listed.ids == ["alice"] and listed.next_ == "alice")
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
