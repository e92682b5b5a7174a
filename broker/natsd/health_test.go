package natsd_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// A stream directory with no stream behind it is what single-server Healthz sees of a
// stream being created: Healthy lets it pass for a grace, and reports it once it lasts.
func TestHealthyToleratesAStreamBeingCreated(t *testing.T) {
	defer natsd.SetRecoverGrace(time.Hour)()
	dir := t.TempDir()
	srv, err := natsd.Start(natsd.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if err := srv.Healthy(); err != nil {
		t.Fatalf("a fresh server: %v", err)
	}
	// Where the file store keeps foreman's account's streams.
	if err := os.MkdirAll(filepath.Join(dir, "jetstream", "FOREMAN", "streams", "BEING_MADE"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := srv.Healthy(); err != nil {
		t.Fatalf("a stream seen for the first time unrecovered: %v, want healthy for the grace", err)
	}
	// Once past its grace (none now), the same stream counts.
	natsd.SetRecoverGrace(0)
	if err := srv.Healthy(); err == nil || !strings.Contains(err.Error(), "BEING_MADE' could not be recovered") {
		t.Fatalf("Healthy: %v, want the stream that could not be recovered", err)
	}
}

// A stream still in its grace does not hide the others Healthz lists after it: one seen
// on an earlier call (past a grace of 1ns) is reported beside one seen for the first
// time.
func TestHealthyReportsPastGraceBesideANewStream(t *testing.T) {
	defer natsd.SetRecoverGrace(time.Nanosecond)()
	dir := t.TempDir()
	srv, err := natsd.Start(natsd.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	streams := filepath.Join(dir, "jetstream", "FOREMAN", "streams")
	if err := os.MkdirAll(filepath.Join(streams, "ZZ_OLDER"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := srv.Healthy(); err != nil {
		t.Fatalf("a stream seen for the first time unrecovered: %v, want healthy for the grace", err)
	}
	if err := os.MkdirAll(filepath.Join(streams, "AA_NEWER"), 0o700); err != nil {
		t.Fatal(err)
	}
	err = srv.Healthy()
	if err == nil || !strings.Contains(err.Error(), "ZZ_OLDER' could not be recovered") {
		t.Fatalf("Healthy: %v, want the stream past its grace", err)
	}
	if strings.Contains(err.Error(), "AA_NEWER") {
		t.Fatalf("Healthy: %v, want the new stream in its grace", err)
	}
}

// nats-server's Healthz of a server without a listener (the embedded default) races its
// startup's closed channel against a 1 ms timer, and on a loaded machine says "startup did
// not complete" of a server up for hours (CI's full-disk test met it: /healthz named that
// instead of the disk's write error). Healthy asks again once the server says it is
// ready, and reports what that answer says.
func TestHealthyAsksAgainWhenHealthzLosesItsReadinessRace(t *testing.T) {
	srv, err := natsd.Start(natsd.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	srv.HealthzSaysNotReadyOnce()
	if err := srv.Healthy(); err != nil {
		t.Fatalf("a started server whose Healthz lost its readiness race: %v, want healthy", err)
	}
}
