package worker

import (
	"context"
	"fmt"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A pause for a store fault that only a restart ends keeps saying so through probes that
// got no answer in time (a stream with a write error answers none of its failing
// writes, and a fault check that hangs leaves the fault unknown meanwhile); an answer
// that is another refusal ends it, and a pause for the target never says it.
func TestPauseRestartNeededFollowsItsCause(t *testing.T) {
	t.Parallel()
	fault := fmt.Errorf("broker: probe write: %w until foreman restarts (the store's fault: write error)", broker.ErrStoreFailed)
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
