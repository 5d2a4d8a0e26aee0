"""The local AWS: moto server, with DynamoDB requests made atomic as DynamoDB guarantees.

moto's threaded server runs a conditional write as check-then-write without a lock, and
`TransactWriteItems` snapshots whole tables and restores them when a transaction is
cancelled. Under concurrent requests (which every Pushgate test makes) that loses updates
real DynamoDB never loses: two claims both pass one condition, a cancelled transaction
undoes a neighbour's write. One lock around DynamoDB request handling gives back per-item
atomicity and serialisable transactions. Other services keep moto's own behaviour.

Usage: python moto_local.py [moto_server options], e.g. -H 127.0.0.1 -p 5000.
"""

import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_LOCK = threading.Lock()
_CALL_ACTION = DynamoHandler.call_action


def _serialised(self):
    with _LOCK:
        return _CALL_ACTION(self)


DynamoHandler.call_action = _serialised

if __name__ == "__main__":
    sys.exit(main())
