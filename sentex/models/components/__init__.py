"""Plain ``nn.Module`` networks and their pre/post-processing, shared by training and inference."""
