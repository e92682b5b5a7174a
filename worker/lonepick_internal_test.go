package worker

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A foreman on a store of its own (the embedded server) looks for no job another Mac
// runs, and a pick reads nothing for it: Config.Runs (which reads the targets' entries
// when the own target does not list the model) is asked once per head, by runnable. A
// head older than MaxWait was asked a second time, by the look for a run elsewhere that
// a store of its own never has, at every pick for as long as the job waited.
func TestALonePickAsksRunsOncePerHead(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		exclusive bool
		elsewhere func(context.Context, string) bool
	}{
		{"store of its own", true, func(context.Context, string) bool { return true }},
		{"no other Mac told", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.Exclusive = tc.exclusive }))
			fake := ollamatest.New(t)
			target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			body := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`)
			if _, err := b.Store.Submit(ctx, &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat}, body); err != nil {
				t.Fatal(err)
			}
			var asked atomic.Int64
			const maxWait = time.Minute
			w, err := New(Config{
				Store: b.Store, Target: target, MaxWait: maxWait, Elsewhere: tc.elsewhere,
				// Not run here: the job stays at its queue's head, older than MaxWait.
				Runs:      func(context.Context, string) bool { asked.Add(1); return false },
				serverNow: func() time.Time { return time.Now().Add(2 * maxWait) },
			})
			if err != nil {
				t.Fatal(err)
			}
			w.resumeRead = true // no first-pick look for jobs cut short
			d, _, err := w.next(ctx)
			if err != nil || d != nil {
				t.Fatalf("next: %v, %v; want no job", d, err)
			}
			if n := asked.Load(); n != 1 {
				t.Fatalf("Config.Runs asked %d times in one pick of one head, want 1", n)
			}
		})
	}
}
