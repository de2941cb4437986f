# Sourced, from the repository root, by the scripts that run asymre: sets `bin` to $ASYMRE when
# given, else builds the release binary (quietly) and names it.
bin=${ASYMRE:-}
if [ -z "$bin" ]; then
    make -s build >/dev/null
    bin=./target/release/asymre
fi
