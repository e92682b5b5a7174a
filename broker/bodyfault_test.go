package broker_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// faultyStore is a store whose Config.WriteFault reports a write error (as the embedded
// server's health check does for a stream that failed a write on a full disk) once
// failing is set.
func faultyStore(t *testing.T) (*brokertest.Bundle, *atomic.Bool) {
	t.Helper()
	var failing atomic.Bool
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.WriteFault = func() error {
			if failing.Load() {
				return errors.New("stream OBJ_FOREMAN_ARTIFACTS write error: no space left on device")
			}
			return nil
		}
	}))
	return b, &failing
}

// bigBody is a request body too large for a queue message: it is stored in the object
// store (ADR-0019).
var bigBody = bytes.Repeat([]byte("0123456789abcdef"), 2<<20/16)

// artifactsLastSeq is the last sequence of the artifacts stream: it moves with every
// write to the object store.
func artifactsLastSeq(t *testing.T, b *brokertest.Bundle) uint64 {
	t.Helper()
	st, err := b.JetStream(t).Stream(ctxT(t), "OBJ_"+broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// A large submit while the store cannot write (a fault that stands) fails at once with
// ErrStoreFailed, as a small one does, and writes no chunk of its body first: the body
// write obeys the fault rules of the record and queue writes.
func TestLargeSubmitUnderAStandingFaultWritesNothing(t *testing.T) {
	t.Parallel()
	b, failing := faultyStore(t)
	failing.Store(true)
	if err := b.Store.CheckWriteFault(); err == nil {
		t.Fatal("the injected write fault does not stand")
	}
	before := artifactsLastSeq(t, b)
	_, err := b.Store.Submit(ctxT(t), &broker.Job{Model: "vision", Kind: broker.KindChat}, bigBody)
	if !errors.Is(err, broker.ErrStoreFailed) {
		t.Fatalf("large submit under a standing fault: %v, want ErrStoreFailed", err)
	}
	if after := artifactsLastSeq(t, b); after != before {
		t.Errorf("the artifacts stream went from sequence %d to %d: the body was written under a standing fault", before, after)
	}
}

// A large submit whose body put goes unanswered (a stream that failed a write on a full
// disk answers none of its publishes; here the put's deadline has passed) is that fault
// when the store's WriteFault reports one: ErrStoreFailed, a 503 saying foreman needs a
// restart, not the put's bare timeout (a 500). Without a fault it is ErrUnavailable, a
// 503 to retry.
func TestLargeSubmitWhoseBodyPutTimesOutIsTheFault(t *testing.T) {
	t.Parallel()
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	// Two stores: the fault is asked at most once a second.
	healthy, _ := faultyStore(t)
	_, err := healthy.Store.Submit(expired, &broker.Job{Model: "vision", Kind: broker.KindChat}, bigBody)
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("large submit whose put timed out, no fault: %v, want ErrUnavailable", err)
	}
	b, failing := faultyStore(t)
	failing.Store(true)
	_, err = b.Store.Submit(expired, &broker.Job{Model: "vision", Kind: broker.KindChat}, bigBody)
	if !errors.Is(err, broker.ErrStoreFailed) {
		t.Fatalf("large submit whose put timed out against a faulted store: %v, want ErrStoreFailed", err)
	}
	if b.Store.WriteFault() == nil {
		t.Error("the fault found by the put is not remembered")
	}
}

// A job with a stored body that ends while the store cannot write leaves its body for the
// object store's TTL at once rather than wait on a delete that goes unanswered (the
// worker would stall at every such job); once the store writes again, Finish deletes.
func TestFinishLeavesTheBodyWhileTheStoreCannotWrite(t *testing.T) {
	t.Parallel()
	b, failing := faultyStore(t)
	ctx := ctxT(t)
	objects, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	finish := func() string {
		t.Helper()
		j, err := b.Store.Submit(ctx, &broker.Job{Model: "vision", Kind: broker.KindChat}, bigBody)
		if err != nil || j.BodyRef == "" {
			t.Fatalf("submit: %v (body ref %q)", err, j.BodyRef)
		}
		d, err := b.Store.NextWait(ctx, token(t, "vision"), arrival)
		if err != nil || d == nil || d.JobID != j.ID {
			t.Fatalf("next: %+v %v", d, err)
		}
		if failing.Load() && b.Store.CheckWriteFault() == nil {
			t.Fatal("the injected write fault does not stand")
		}
		if err := b.Store.Finish(ctx, d); err != nil {
			t.Fatalf("finish: %v", err)
		}
		return j.BodyRef
	}

	failing.Store(false)
	if _, err := objects.GetInfo(ctx, finish()); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Errorf("body after a finish on a healthy store: %v, want it deleted", err)
	}
	// The fault is found only once the job was taken: the submit stored its body.
	failing.Store(true)
	ref := finish()
	if _, err := objects.GetInfo(ctx, ref); err != nil {
		t.Errorf("body after a finish while the store cannot write: %v, want it left for the TTL", err)
	}
}

// tmpfsDir mounts a tmpfs of size bytes, a disk that can really fill up, for the test's
// duration, and fills returns a func that takes all its room. Mounting needs root
// (.ci/run is): elsewhere the test skips.
func tmpfsDir(t *testing.T, size int) (dir string, fill func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a real full disk needs a tmpfs mount, so root: skipped (.ci/run runs it)")
	}
	dir = t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s): skipped", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir, func() {
		f, err := os.Create(filepath.Join(dir, "ballast"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		zeros := make([]byte, 64<<10)
		for {
			if _, err := f.Write(zeros); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("fill: %v", err)
				}
				return
			}
		}
	}
}

// On a disk that really filled up, with the artifacts stream failed by a write, the
// delete of a finished job's stored body goes unanswered (nats-server answers no failing publish of a stream with a write error).
// Finish gives it up after a few seconds rather than wait out its caller's deadline (the
// worker stalled 30 s at every such job, and a stop overran its timeout), and the fault
// the unanswered delete finds makes the next job's delete skipped at once.
func TestFinishOnAFullDiskDoesNotWaitOutItsCaller(t *testing.T) {
	t.Parallel()
	disk, fill := tmpfsDir(t, 40<<20)
	var b *brokertest.Bundle
	b = brokertest.New(t,
		brokertest.WithNATS(func(c *natsd.Config) { c.DataDir = filepath.Join(disk, "data") }),
		brokertest.WithStore(func(c *broker.Config) {
			c.WriteFault = func() error { return b.Server.WriteError(broker.JobStreams()...) }
		}))
	ctx := ctxT(t)
	j, err := b.Store.Submit(ctx, &broker.Job{Model: "vision", Kind: broker.KindChat}, bigBody)
	if err != nil || j.BodyRef == "" {
		t.Fatalf("submit: %v (body ref %q)", err, j.BodyRef)
	}
	d, err := b.Store.Next(ctx, token(t, "vision"))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("next: %+v %v", d, err)
	}
	fill()
	// A write the store does not see fails on the full disk, so the artifacts stream
	// has a write error the store knows nothing of yet.
	objects, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if _, err := objects.PutBytes(pctx, "ballast", bigBody); err == nil {
		t.Fatal("a 2 MiB put on a full disk was stored")
	}
	// The put gives up when its write goes unanswered, or at its timeout: on a loaded
	// machine that may come before the stream has tried the write (CI).
	eventually(t, 30*time.Second, "a stream's write error after a put on a full disk", func() bool {
		return b.Server.WriteError() != nil
	})
	caller, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Store.Finish(caller, d); err != nil {
		t.Fatalf("finish on a full disk: %v", err)
	}
	if caller.Err() != nil {
		t.Fatal("Finish on a full disk waited out its caller's deadline")
	}
	if b.Store.WriteFault() == nil {
		t.Error("the unanswered delete found no fault: the next job's delete would wait as long")
	}
}
