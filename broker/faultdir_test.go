package broker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A stream that failed a write takes none until foreman restarts, whatever a look at the
// data directory finds meanwhile: a look that fails (here a lock file that is a symlink
// loop; an I/O error of the same failing disk alike) must not hide the stream's write
// error behind a fault that may pass (app.Start marks ErrDataDirUnchecked so).
func TestWriteErrorOfAStreamIsNotHiddenByAnUncheckedDataDir(t *testing.T) {
	t.Parallel()
	disk, fill := tmpfsDir(t, 40<<20)
	dir := filepath.Join(disk, "data")
	b := brokertest.New(t, brokertest.WithNATS(func(c *natsd.Config) { c.DataDir = dir }))
	ctx := ctxT(t)
	fill()
	objects, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if _, err := objects.PutBytes(pctx, "ballast", bigBody); err == nil {
		t.Fatal("a 2 MiB put on a full disk was stored")
	}
	if err := b.Server.WriteError(broker.JobStreams()...); err == nil {
		t.Fatal("no stream has a write error after a put on a full disk")
	}
	lock := filepath.Join(dir, "foreman.lock")
	if err := os.Remove(lock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(lock, lock); err != nil {
		t.Fatal(err)
	}
	if err := b.Server.DataDirError(); !errors.Is(err, natsd.ErrDataDirUnchecked) {
		t.Fatalf("DataDirError: %v; want a look that failed (the test's premise)", err)
	}
	if err := b.Server.WriteError(broker.JobStreams()...); err == nil || errors.Is(err, natsd.ErrDataDirUnchecked) {
		t.Errorf("WriteError: %v; want the stream's write error, which lasts until a restart", err)
	}
}
