"""The EnCLAP web demo: `python gradio_app.py [--ckpt DIR] [--clap SPEC] [--host H] [--port N] [--share]`. See --help.

With no arguments after `make demo` it serves the demo's captioner on http://127.0.0.1:7860.
The app is built in enclap/webapp.py.
"""

import os
import sys

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before anything imports gradio

from enclap.cli import web_main

if __name__ == "__main__":
    sys.exit(web_main())
