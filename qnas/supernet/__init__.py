"""Weight-sharing supernet with elastic kernel/expand/depth/width/resolution and switchable bit widths."""
