import sys

from leafe_jax.cli import main

sys.exit(main())
