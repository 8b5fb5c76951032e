import sys

from sae_rdp_plugin.cli import main

sys.exit(main())
