package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Every refusal the gateway makes is a sentinel that statusOf, the one mapping, turns
// into its status; the message is the client's, byte for byte.
func TestStatusOfRefusals(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		kind error
		want int
	}{
		{ErrInvalid, http.StatusBadRequest},
		{ErrUnauthorized, http.StatusUnauthorized},
		{ErrForbidden, http.StatusForbidden},
		{ErrNoRoute, http.StatusNotFound},
		{ErrMethodNotAllowed, http.StatusMethodNotAllowed},
		{ErrBodyTimeout, http.StatusRequestTimeout},
		{ErrConflict, http.StatusConflict},
		{ErrTooLarge, http.StatusRequestEntityTooLarge},
		{ErrRangeNotSatisfiable, http.StatusRequestedRangeNotSatisfiable},
		{ErrKeyReused, http.StatusUnprocessableEntity},
		{ErrProgramLimit, http.StatusTooManyRequests},
		{ErrInternal, http.StatusInternalServerError},
		{ErrBadUpstream, http.StatusBadGateway},
		{ErrUnavailable, http.StatusServiceUnavailable},
	} {
		err := fmt.Errorf("wrapped: %w", refuse(c.kind, "the message"))
		if !errors.Is(err, c.kind) {
			t.Errorf("%v: errors.Is is false", c.kind)
		}
		if status, msg := statusOf(err); status != c.want || msg != "the message" {
			t.Errorf("%v: %d %q, want %d %q", c.kind, status, msg, c.want, "the message")
		}
	}
}

// The store's refusals of what a request asked for are the client's 400, not foreman's
// 500: a model name no queue subject can carry, a bad job id or artifact name, a job too
// large to store.
func TestStatusOfStoreRefusals(t *testing.T) {
	t.Parallel()
	for _, kind := range []error{broker.ErrBadModel, broker.ErrBadID, broker.ErrBadArtifactName, broker.ErrJobTooLarge} {
		if status, _ := statusOf(fmt.Errorf("submit: %w", kind)); status != http.StatusBadRequest {
			t.Errorf("%v: %d, want 400", kind, status)
		}
	}
}

// A sync job's outcome maps through the same function: the target's status (the worker's
// Foreman-Status) is data it carries.
func TestStatusOfJobOutcome(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err    *broker.JobError
		status int
		msg    string
	}{
		{&broker.JobError{State: broker.StateCanceled}, 409, "job canceled"},
		{&broker.JobError{State: broker.StateCanceled, Message: "by hand"}, 409, "job canceled: by hand"},
		{&broker.JobError{State: broker.StateFailed}, 502, "job failed"},
		{&broker.JobError{State: broker.StateFailed, Message: "boom", Status: 418}, 418, "boom"},
	} {
		if status, msg := statusOf(c.err); status != c.status || msg != c.msg {
			t.Errorf("%+v: %d %q, want %d %q", c.err, status, msg, c.status, c.msg)
		}
	}
}

// A path the ollama client cannot send is the request's fault: 400, not a 500.
func TestStatusOfBadPath(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("relay: %w", fmt.Errorf("%w %q", ollama.ErrBadPath, "/x?a b"))
	if status, _ := statusOf(err); status != http.StatusBadRequest {
		t.Errorf("status %d, want 400", status)
	}
}

// clipInput keeps a short value whole and cuts a long one on a character's first byte.
func TestClipInput(t *testing.T) {
	if got := clipInput("tiny-a"); got != "tiny-a" {
		t.Errorf("short value: %q", got)
	}
	long := strings.Repeat("é", maxQuoted) // 2 bytes each: maxQuoted falls on a first byte
	if got := clipInput(long); got != long[:maxQuoted]+"…" {
		t.Errorf("long value clipped to %d bytes %q", len(got), got)
	}
	odd := "x" + long // maxQuoted falls inside an é
	if got := clipInput(odd); got != odd[:maxQuoted-1]+"…" || !utf8.ValidString(got) {
		t.Errorf("long value clipped to %d bytes %q", len(got), got)
	}
}

// A submit refused for a store fault says foreman needs a restart only for a fault that
// lasts until one (a stream's write error), not for one that may pass (a data directory
// that could not be checked).
func TestStatusOfAStoreFaultSaysARestartOnlyWhenNeeded(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		fault   error
		restart bool
	}{
		{errors.New("stream KV_FOREMAN_JOBS write error: no space left on device"), true},
		{broker.FaultMayPass(errors.New("data directory /data cannot be checked: input/output error")), false},
	} {
		b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) {
			cfg.WriteFault = func() error { return c.fault }
		}))
		err := b.Store.CheckWriteFault()
		status, msg := statusOf(fmt.Errorf("submit: %w", err))
		if status != http.StatusServiceUnavailable || strings.Contains(msg, "restart") != c.restart {
			t.Errorf("%v: %d %q, want 503 that speaks of a restart: %v", c.fault, status, msg, c.restart)
		}
	}
}

// A stream write error of a file system gone read-only (ext4's errors=remount-ro after a
// disk error) is no full disk: its refusal says the data directory went read-only and
// the disk needs fixing, not room; a full disk's keeps its words.
func TestStatusOfAReadOnlyDataDirSaysSo(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		fault     error
		want, not string
	}{
		{natsd.StreamWriteError("JetStream stream 'FOREMAN > KV_FOREMAN_JOBS' write error: open /data/jetstream/x.blk: read-only file system"),
			"its data directory went read-only", "has room"},
		{natsd.StreamWriteError("JetStream stream 'FOREMAN > KV_FOREMAN_JOBS' write error: write /data/jetstream/x.blk: no space left on device"),
			"once its disk has room", "read-only"},
	} {
		b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) {
			cfg.WriteFault = func() error { return c.fault }
		}))
		err := b.Store.CheckWriteFault()
		status, msg := statusOf(fmt.Errorf("submit: %w", err))
		if status != http.StatusServiceUnavailable || !strings.HasPrefix(msg, "job store cannot write") ||
			!strings.Contains(msg, c.want) || strings.Contains(msg, c.not) || !strings.Contains(msg, "restart") {
			t.Errorf("%v: %d %q, want 503 job store cannot write, %q, a restart, and not %q", c.fault, status, msg, c.want, c.not)
		}
	}
}
