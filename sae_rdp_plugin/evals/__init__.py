"""SAEBench eval modules shipped by sae-rdp (one folder per eval, SAEBench layout)."""
