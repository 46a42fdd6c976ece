#!/usr/bin/env bash
# Container entrypoint: resolve the model (and, for TensorRT, the engine cache), then
# exec `shelf-stream serve` so that it is PID 1's child-less replacement and gets
# SIGTERM directly (graceful drain on `docker stop`).
#
#   docker run IMAGE                      serve with the settings below
#   docker run IMAGE --max-streams 8      the same, extra serve options appended
#   docker run IMAGE shelf-stream send …  any other command runs as given
#
# Environment (all optional):
#   SHELF_STREAM_MODEL        model path (ONNX, or a TensorRT engine with its sidecar)
#   SHELF_STREAM_MODEL_DIR    where to look for exactly one *.onnx otherwise (/models);
#                             none there: the YOLOX-Nano shipped inside the package
#   SHELF_STREAM_BACKEND      onnxruntime | tensorrt | auto | triton (image default)
#   SHELF_STREAM_HOST/PORT    listen address (0.0.0.0:8765)
#   SHELF_STREAM_MAX_BATCH, SHELF_STREAM_BATCH_WAIT_MS   cross-stream batching
#   SHELF_STREAM_THREADS      inference threads
#   SHELF_STREAM_TRITON_URL, SHELF_STREAM_TRITON_MODEL, SHELF_STREAM_TRITON_SHM=1
#   SHELF_STREAM_TOKEN        read by `serve` itself (never put on the command line)
#   XDG_CACHE_HOME            cache root; TensorRT engines go to
#                             $XDG_CACHE_HOME/shelf-stream/models/engines (a volume)
#   SHELF_STREAM_BIN          the CLI to exec (default shelf-stream; tests replace it)
set -euo pipefail

die() {
    echo "entrypoint: $*" >&2
    exit 2
}

# Anything that is not a serve option is a command of its own.
if [[ $# -gt 0 && $1 != -* && $1 != serve ]]; then
    exec "$@"
fi
[[ ${1:-} == serve ]] && shift

backend=${SHELF_STREAM_BACKEND:-onnxruntime}
model_dir=${SHELF_STREAM_MODEL_DIR:-/models}

resolve_model() {
    if [[ -n ${SHELF_STREAM_MODEL:-} ]]; then
        [[ -f $SHELF_STREAM_MODEL ]] || die "SHELF_STREAM_MODEL=$SHELF_STREAM_MODEL does not exist (is the volume mounted?)"
        printf '%s\n' "$SHELF_STREAM_MODEL"
        return
    fi
    local found=()
    if [[ -d $model_dir ]]; then
        shopt -s nullglob
        found=("$model_dir"/*.onnx)
        shopt -u nullglob
    fi
    case ${#found[@]} in
        1) printf '%s\n' "${found[0]}" ;;
        0)
            # Triton holds the model itself; the gateway only needs its name. Otherwise
            # serve takes the YOLOX-Nano that ships inside the package.
            [[ $backend == triton ]] && return
            echo "entrypoint: no model in $model_dir: serving the packaged YOLOX-Nano (mount one .onnx there or set SHELF_STREAM_MODEL for another)" >&2
            ;;
        *) die "several .onnx files in $model_dir (${found[*]}); set SHELF_STREAM_MODEL to one of them" ;;
    esac
}

prepare_engine_cache() {
    # serve --backend tensorrt builds the engine for this GPU on first start (minutes)
    # and reuses it afterwards; the cache must survive the container, hence a volume.
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/shelf-stream/models/engines"
    mkdir -p "$cache" 2>/dev/null || die "cannot create the engine cache $cache (mount a writable volume there)"
    [[ -w $cache ]] || die "the engine cache $cache is not writable by uid $(id -u) (chown the volume)"
    echo "entrypoint: TensorRT engines cached in $cache (built on first start for this GPU)" >&2
}

model=$(resolve_model)
args=(serve --host "${SHELF_STREAM_HOST:-0.0.0.0}" --port "${SHELF_STREAM_PORT:-8765}" --backend "$backend")
[[ -n $model ]] && args+=(--model "$model")
[[ $backend == tensorrt || $backend == auto ]] && prepare_engine_cache
[[ -n ${SHELF_STREAM_MAX_BATCH:-} ]] && args+=(--max-batch "$SHELF_STREAM_MAX_BATCH")
[[ -n ${SHELF_STREAM_BATCH_WAIT_MS:-} ]] && args+=(--batch-wait-ms "$SHELF_STREAM_BATCH_WAIT_MS")
[[ -n ${SHELF_STREAM_THREADS:-} ]] && args+=(--threads "$SHELF_STREAM_THREADS")
if [[ $backend == triton ]]; then
    [[ -n ${SHELF_STREAM_TRITON_URL:-} ]] || die "SHELF_STREAM_BACKEND=triton needs SHELF_STREAM_TRITON_URL (host:8001)"
    args+=(--triton-url "$SHELF_STREAM_TRITON_URL")
    [[ -n ${SHELF_STREAM_TRITON_MODEL:-} ]] && args+=(--triton-model "$SHELF_STREAM_TRITON_MODEL")
    [[ ${SHELF_STREAM_TRITON_SHM:-0} == 1 ]] && args+=(--triton-shm)
fi

exec "${SHELF_STREAM_BIN:-shelf-stream}" "${args[@]}" "$@"
