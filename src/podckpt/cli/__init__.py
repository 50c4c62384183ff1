"""`kubectl podckpt`: see and act on checkpoints without exec (standard library only: it
drives `kubectl`, so every kubeconfig, context and credential plugin works as for kubectl)."""
