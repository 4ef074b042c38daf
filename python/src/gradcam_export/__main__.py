"""`python -m gradcam_export`: see `gradcam_export.cli`."""

from .cli import main

raise SystemExit(main())
