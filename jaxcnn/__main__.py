"""`python -m jaxcnn` runs the CLI."""

from jaxcnn.cli import main

raise SystemExit(main())
