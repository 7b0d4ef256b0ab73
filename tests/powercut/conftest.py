"""The power-loss test reuses the integration tests' daemon fixture code (tests/integration/
conftest.py: Daemon, coordd_binary) and coordlib, imported here as plain modules."""

import importlib.util
import sys
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parent.parent / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

_spec = importlib.util.spec_from_file_location("integration_conftest",
                                               INTEGRATION / "conftest.py")
integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integration)  # also puts coord_pb2 on sys.path
sys.modules["integration_conftest"] = integration
