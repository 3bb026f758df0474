# Source it first in every device command, from the repository root:   . bench/gpu/setup.sh
# Installs the carried wheels (.gpu/wheels, made by bench/gpu/prepare.sh) into /tmp/site, exports PYTHONPATH,
# unpacks the carried ComfyUI releases into /tmp/comfy-<version>, prints versions and nvidia-smi.
# Idempotent: a still-warm machine skips what is already there.
if [ ! -d .gpu/wheels ]; then
  echo "setup.sh: .gpu/ is missing: run bench/gpu/prepare.sh here and name .gpu in carry" >&2
  return 1 2>/dev/null || exit 1
fi
if [ ! -f /tmp/site/.wan_accel_wheels ] || [ .gpu/wheels -nt /tmp/site/.wan_accel_wheels ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl && touch /tmp/site/.wan_accel_wheels
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
for tarball in .gpu/ComfyUI-*.tar.gz; do
  v=$(basename "$tarball" .tar.gz); v=${v#ComfyUI-}
  if [ ! -d "/tmp/comfy-$v" ]; then
    tar -xzf "$tarball" -C /tmp && mv "/tmp/ComfyUI-$v" "/tmp/comfy-$v"
  fi
done
python3 - <<'PY'
import importlib, torch
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")
for name in ("triton", "av", "torchsde", "comfy_kitchen", "comfy_aimdo", "sqlalchemy", "pydantic", "sageattention"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '?')}")
    except Exception as exc:
        print(f"  {name}: {type(exc).__name__}: {exc}")
PY
ls -d /tmp/comfy-* 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
df -h /tmp | tail -1
