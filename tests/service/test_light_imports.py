"""The API process stays light: importing the app must not import torch, models/ or worker/."""

import subprocess
import sys


def test_service_main_does_not_import_torch() -> None:
    code = (
        "import sys, service.main\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'models', 'worker'})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_cli_help_does_not_import_torch() -> None:
    code = "import sys\nfrom cli.main import build_parser\nbuild_parser()\nprint('torch' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
