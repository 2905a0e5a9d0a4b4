"""The latent-video path (LVDD): int8 diffusers VAE (Eq. 6), HOSVD latents, pack / unpack.

Layers: :mod:`.io` (reading clips, tensors and device names), :mod:`.vae` (quantised VAE
storage, encode / decode helpers), :mod:`.pack` (building an archive under a budget),
:mod:`.unpack` (decoded videos as mp4 / PNG contact sheets). Unpacking a whole archive reads
it through the Dataset, so it lives one layer up: :func:`codec.loader.unpack.unpack_archive`.
"""

from .io import find_clips, load_tensors, parse_device, parse_resolution, read_clip
from .pack import ArchivePlan, encode_clips, encode_frame_tensor, pack_latents, pack_videos, parse_size, plan_latent_archive
from .vae import (SD_VAE_FT_MSE_CONFIG, decode_error, decode_latents, encode_frames, fake_quantize, load_vae_dir,
                  read_vae, save_vae_dir, tiny_vae_config, vae_from_config, write_vae)

__all__ = [
    "find_clips", "load_tensors", "parse_device", "parse_resolution", "read_clip",
    "ArchivePlan", "encode_clips", "encode_frame_tensor", "pack_latents", "pack_videos", "parse_size", "plan_latent_archive",
    "SD_VAE_FT_MSE_CONFIG", "decode_error", "decode_latents", "encode_frames", "fake_quantize", "load_vae_dir",
    "read_vae", "save_vae_dir", "tiny_vae_config", "vae_from_config", "write_vae",
]
