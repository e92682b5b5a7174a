package main

import (
	"errors"
	"io"
	"log/slog"
	"testing"
)

// A shutdown the operator cut short is an error (exit 1) whatever the shutdown itself
// returned: the worker hands a running job back at the cut without an error, and the wait
// for sync answers says "context canceled" only when it sees the cut before its own end,
// so with serr alone a cut shutdown exited 0 now and then
// (TestSecondStopCutsTheShutdownShort failed so in CI).
func TestShutdownResult(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	failed := errors.New("a component failed")
	left := errors.New("end waiting responses: context canceled")
	for _, c := range []struct {
		name      string
		err, serr error
		cut       bool
		want      []error // each must match with errors.Is; none: nil
	}{
		{"clean", nil, nil, false, nil},
		{"shutdown error", nil, left, false, []error{left}},
		{"failure", failed, nil, false, []error{failed}},
		{"cut, the shutdown saying nothing", nil, nil, true, []error{errShutdownCut}},
		{"cut, the shutdown saying what it left", nil, left, true, []error{errShutdownCut}},
		{"a failure's shutdown cut", failed, nil, true, []error{failed, errShutdownCutAfterFailure}},
	} {
		got := shutdownResult(c.err, c.serr, c.cut, log)
		if len(c.want) == 0 {
			if got != nil {
				t.Errorf("%s: %v, want nil", c.name, got)
			}
			continue
		}
		for _, w := range c.want {
			if !errors.Is(got, w) {
				t.Errorf("%s: %v, want it to be %v", c.name, got, w)
			}
		}
		if c.cut && errors.Is(got, left) {
			t.Errorf("%s: %v says Go's words of what the cut left; the log says them", c.name, got)
		}
	}
}
