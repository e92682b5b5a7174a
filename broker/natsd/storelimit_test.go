package natsd_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A store that holds more than three times the disk space still free (other files took
// room since foreman last started: Ollama pulling models onto the Mac's disk) still takes
// writes after a restart. Left to choose, nats-server set its limit to 75 % of the free
// space plus 75 % of what the store holds, below what the store holds, and refused every
// write of the restarted foreman, though the disk had room. Needs root, for a real disk
// of a known size (a tmpfs); it skips elsewhere.
func TestRestartWithAStoreLargerThanThriceTheFreeSpaceTakesWrites(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a disk of a known size needs a tmpfs mount, so root: skipped (.ci/run runs it)")
	}
	disk := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(32<<20), "tmpfs", disk).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s): skipped", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", disk).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", disk, err, out)
		}
	})
	dir := filepath.Join(disk, "data")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	publish := func(n, size int) error {
		srv, err := natsd.Start(natsd.Config{DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown()
		nc, err := srv.Connect()
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "HELD", Subjects: []string{"held"}, Storage: jetstream.FileStorage}); err != nil {
			t.Fatal(err)
		}
		chunk := bytes.Repeat([]byte("h"), size)
		for range n {
			if _, err := js.Publish(ctx, "held", chunk); err != nil {
				return err
			}
		}
		return nil
	}
	// 12 MiB held, with 32 MiB free at start.
	if err := publish(96, 128<<10); err != nil {
		t.Fatalf("filling the store: %v", err)
	}
	// Another file takes the disk but for 3 MiB.
	filler := filepath.Join(disk, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 64<<10)
	var written int64
	for {
		n, err := f.Write(zeros)
		written += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	if err := f.Truncate(written - 3<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	if err := publish(4, 1<<10); err != nil {
		t.Fatalf("a write after a restart with 3 MiB free and 12 MiB held: %v, want it taken", err)
	}
}
