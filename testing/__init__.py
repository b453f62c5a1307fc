"""Development helpers shared by tests/ and scripts/: `testing.comfy_host` starts and drives a real ComfyUI
server with this pack. Standard library only at import time (no ComfyUI, no torch), so unit tests and scripts
import it freely."""
