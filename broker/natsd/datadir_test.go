package natsd_test

import (
	"errors"
	"log/slog"
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

// A data directory whose JetStream store was removed (an rm -rf of the wrong folder, a
// restore that left it out) starts with an empty store, and nats-server says nothing of
// it: foreman does, once, naming the directory. A first start, with no store yet, is not
// taken for one.
func TestStartOnADataDirWhoseStoreIsGoneSaysSo(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	for i, remove := range []bool{false, false, true} {
		if remove {
			if err := os.RemoveAll(filepath.Join(dir, "jetstream")); err != nil {
				t.Fatal(err)
			}
		}
		logs := &warnings{}
		srv, err := natsd.Start(natsd.Config{DataDir: dir, Logger: slog.New(logs)})
		if err != nil {
			t.Fatal(err)
		}
		srv.Shutdown()
		got := logs.with("data directory damaged")
		if remove && (len(got) != 1 || !strings.Contains(got[0], "JetStream store (jetstream/) is missing")) {
			t.Errorf("start %d, the store removed: %q; want it said", i, got)
		}
		if !remove && len(got) != 0 {
			t.Errorf("start %d, the store in place: %q; want nothing said", i, got)
		}
	}
}
