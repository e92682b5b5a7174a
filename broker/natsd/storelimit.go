package natsd

import (
	"io/fs"
	"path/filepath"
)

// storeLimit is the JetStream storage limit of a server started on dataDir: what its
// store holds now plus three quarters of the disk space free now, or 0 (the server
// chooses) when the free space cannot be read.
//
// Left to choose, nats-server takes 75 % of the free space plus 75 % of what its store
// holds. That is stable only while nothing else on the disk changes: once other files
// have taken room (Ollama's models share a Mac's disk), a store holding more than three
// times the space still free is over its own limit at start, and refuses every write,
// though the disk has room (ADR-0094). Counting the store whole keeps the server's margin
// of a quarter of the free space, and never puts the limit below what the store holds.
func storeLimit(dataDir string) int64 {
	free, ok := diskFree(dataDir)
	if !ok {
		return 0
	}
	var used int64
	_ = filepath.WalkDir(dataDir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil // unreadable parts count as empty: the limit is only lower
		}
		if info, err := d.Info(); err == nil && info.Mode().IsRegular() {
			used += info.Size()
		}
		return nil
	})
	limit := used + free/4*3
	if limit <= 0 {
		return 0
	}
	return limit
}
