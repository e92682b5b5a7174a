package broker_test

import (
	"errors"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A store fault says it lasts until foreman restarts only when it does: a stream's write
// error does, a data directory that could not be checked (marked FaultMayPass) may pass
// at the next check. Both fail the writes with ErrStoreFailed meanwhile.
func TestWriteFaultSaysARestartOnlyWhenOneIsNeeded(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		fault   error
		restart bool
	}{
		{"stream write error", errors.New("JetStream stream '$G > FOREMAN_QUEUE' write error: no space left on device"), true},
		{"data directory unchecked", broker.FaultMayPass(errors.New("data directory /data cannot be checked: input/output error")), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := brokertest.New(t, brokertest.WithStore(func(cfg *broker.Config) {
				cfg.WriteFault = func() error { return c.fault }
			}))
			ferr := b.Store.CheckWriteFault()
			if !errors.Is(ferr, broker.ErrStoreFailed) {
				t.Fatalf("fault %v, want ErrStoreFailed", ferr)
			}
			if got := strings.Contains(ferr.Error(), "restart"); got != c.restart {
				t.Errorf("fault %q: speaks of a restart %v, want %v", ferr, got, c.restart)
			}
			if !strings.Contains(ferr.Error(), c.fault.Error()) {
				t.Errorf("fault %q: does not name the store's fault %q", ferr, c.fault)
			}
			if got := broker.NeedsRestart(ferr); got != c.restart {
				t.Errorf("NeedsRestart(%q) = %v, want %v", ferr, got, c.restart)
			}
			_, err := b.Store.Submit(ctxT(t), &broker.Job{Model: "m", Kind: broker.KindChat}, nil)
			if !errors.Is(err, broker.ErrStoreFailed) || broker.NeedsRestart(err) != c.restart {
				t.Errorf("submit under the fault: %v, want ErrStoreFailed, restart needed %v", err, c.restart)
			}
		})
	}
}
