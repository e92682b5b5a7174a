package natsd_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A data directory replaced by a file of its name is replaced, not unchecked: the look at
// its lock file fails with ENOTDIR, and no later look finds the directory back. Its
// fault is the one that lasts until a restart, not one that may pass.
func TestDataDirReplacedByAFileIsNotUnchecked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	srv, err := natsd.Start(natsd.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = srv.DataDirError()
	if err == nil || errors.Is(err, natsd.ErrDataDirUnchecked) || !strings.Contains(err.Error(), "was removed or replaced") {
		t.Errorf("DataDirError: %v; want the directory removed or replaced, not unchecked", err)
	}
}
