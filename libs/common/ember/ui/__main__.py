import sys

from ember.ui.service import main

if __name__ == "__main__":
    sys.exit(main())
