package gateway

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// heldPs holds a poll between its /api/tags and its /api/ps while armed: the poll has
// read the model list, and ends only when the gate opens.
type heldPs struct {
	ollama.Client
	armed atomic.Bool
	read  chan struct{} // gets a value when a held poll has read the list
	gate  chan struct{}
}

func (h *heldPs) Ps(ctx context.Context) (*ollama.ProcessResponse, []byte, error) {
	if h.armed.CompareAndSwap(true, false) {
		h.read <- struct{}{}
		select {
		case <-h.gate:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	return h.Client.Ps(ctx)
}

// waitInStack waits until n goroutines have fn in their stacks (waiting in it).
func waitInStack(t *testing.T, ctx context.Context, fn string, n int) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for {
		stacks := string(buf[:runtime.Stack(buf, true)])
		if strings.Count(stacks, fn) >= n {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%d goroutines in %s, want %d:\n%s", strings.Count(stacks, fn), fn, n, stacks)
		}
		runtime.Gosched()
	}
}

// A confirm that comes while a poll is under way does not take that poll's list for the
// model list now: the poll may have read it before the model was created again (ollama
// create, then at once the call). Here the poll read the list, the model was created
// again with tools, and a sync tools chat came: it must not be sent straight to Ollama,
// which runs it (beside the worker's job). Before, the confirm shared the poll in flight,
// got the old digest, and sent it straight.
func TestCapabilityConfirmDoesNotTakeAPollBegunBeforeIt(t *testing.T) {
	t.Parallel()
	h := &heldPs{read: make(chan struct{}, 1), gate: make(chan struct{})}
	b := newTestBundle(t, capsModels(), withTarget(func(c ollama.Client) ollama.Client { h.Client = c; return h }))
	ctx := testCtx(t, 30*time.Second)
	tools := capabilityAsks{tools: true}
	if !b.GW.refusedWithoutLoad(ctx, broker.KindChat, "tiny-a", tools) {
		t.Fatal("a tools chat of a model without tools is not sent straight")
	}

	h.armed.Store(true)
	polled := make(chan error, 1)
	go func() { polled <- b.Inv.Refresh(ctx) }() // the poll under way (a tick's, another call's)
	<-h.read
	b.Fake.AddModel(ollamatest.Model{Name: "tiny-a", Tools: true, Digest: "sha256:" + digestHex('5')})
	straight := make(chan bool, 1)
	go func() { straight <- b.GW.refusedWithoutLoad(ctx, broker.KindChat, "tiny-a", tools) }()
	waitInStack(t, ctx, "ollama.(*Inventory).Refresh", 2) // the poll's own caller and the confirm
	close(h.gate)
	if err := <-polled; err != nil {
		t.Fatal(err)
	}
	if <-straight {
		t.Error("a tools chat of the model created again with tools is sent straight to Ollama on the list read before")
	}
}
