"""``python -m wan_accel``: decode a latent with the engine and report time, memory and error."""
from .vae_accel.cli import main

raise SystemExit(main())
