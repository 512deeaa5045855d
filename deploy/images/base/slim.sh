# Run (as `sh`) inside the image after every install step, with VENV set: removes what an actor never
# loads at run time, so images stay small. Part of the base and requirements layers' cache keys.
site=$(echo "$VENV"/lib/python3*/site-packages)
# test suites shipped inside packages, C/C++/Cython sources and headers
find "$site" -depth -type d -name tests -prune -exec rm -rf {} +
find "$site" -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' -o -name '*.hpp' -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' \) -delete
rm -rf "$site"/pyarrow/include "$site"/pyarrow/src "$site"/numpy/_core/include
# uv's 40 MB binary comes with flwr for its packaging commands; actors only import flwr
rm -f "$VENV"/bin/uv "$VENV"/bin/uvx
true
