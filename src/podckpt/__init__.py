"""podckpt: transparent checkpoint/restore for Kubernetes pods."""
