package worker

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A pause for a store fault that only a restart ends keeps saying so through probes that
// got no answer in time (a stream with a write error answers none of its failing
// writes, and a fault check that hangs leaves the fault unknown meanwhile); an answer
// that is another refusal ends it (so does a fault that may pass: a data directory that
// could not be checked), and a pause for the target never says it.
func TestPauseRestartNeededFollowsItsCause(t *testing.T) {
	t.Parallel()
	storeFault := func(report error) error {
		b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
			c.WriteFault = func() error { return report }
		}))
		return fmt.Errorf("broker: probe write: %w", b.Store.CheckWriteFault())
	}
	fault := storeFault(errors.New("stream KV_FOREMAN_JOBS write error: no space left on device"))
	passing := storeFault(broker.FaultMayPass(errors.New("data directory /data cannot be checked: input/output error")))
	timedOut := fmt.Errorf("broker: probe write: %w", context.DeadlineExceeded)
	full := fmt.Errorf("broker: probe write: %w: insufficient storage", broker.ErrStorageFull)
	steps := []struct {
		reason string
		err    error
		want   bool
	}{
		{broker.PauseStoreRefusesWrites, full, false},
		{broker.PauseStoreRefusesWrites, fault, true},
		{broker.PauseStoreRefusesWrites, timedOut, true},
		{broker.PauseStoreRefusesWrites, timedOut, true},
		{broker.PauseStoreRefusesWrites, full, false},
		{broker.PauseStoreRefusesWrites, timedOut, false},
		{broker.PauseStoreRefusesWrites, fault, true},
		{broker.PauseStoreRefusesWrites, passing, false},
		{broker.PauseStoreRefusesWrites, timedOut, false},
		{broker.PauseTargetUnreachable, timedOut, false},
	}
	var w Worker
	for i, s := range steps {
		w.pause(s.reason, s.err)
		if got := w.Paused().RestartNeeded; got != s.want {
			t.Errorf("step %d (%s, %v): restart needed %v, want %v", i, s.reason, s.err, got, s.want)
		}
	}
}
