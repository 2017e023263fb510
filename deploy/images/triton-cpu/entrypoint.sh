#!/bin/sh
# Entrypoint of the triton-cpu image (the `triton-cpu` target of the repository's Dockerfile).
#
# Runs `genai triton`, the platform's own Triton launcher (the launch path `genai serve` and the
# system tests use: the Python-backend home, LD_LIBRARY_PATH, the models' site directories), in
# the foreground as the container's main process: SIGTERM stops Triton, and the container ends
# when Triton does. The launcher writes Triton's log to a file (it reads the file back to confirm
# that its ports listen); this follows that file to stdout, so `docker logs` and `kubectl logs`
# show Triton's own lines too.
#
# Arguments are `genai triton` options (`genai triton --help`); the image's CMD names the model
# repository, the address and the ports. Do not pass --log-file: the one given here is followed.
set -eu

log_file=/tmp/triton/tritonserver.log
mkdir -p "$(dirname -- "$log_file")"
# This start's lines only: /tmp outlives a container restart in a pod (an emptyDir), and the
# previous container's lines are in `kubectl logs --previous`.
: >"$log_file"
# Stops by itself once the process `exec` starts below (it keeps this shell's PID) has exited.
tail -n +1 -F --pid="$$" -- "$log_file" &
exec genai triton --log-file "$log_file" "$@"
