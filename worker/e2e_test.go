package worker_test

import (
	"slices"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// TestRealOllamaDrainsByModel runs an interleaved backlog against a real Ollama
// (shared/realollama) and checks every job ends done with the model swapped once per model.
func TestRealOllamaDrainsByModel(t *testing.T) {
	url := ollamatest.RealOllama(t)
	b := brokertest.New(t)
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: url, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: target, Logger: testLogger()})
	if err := inv.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	tb := &testBundle{b: b, target: target}
	var ids []string
	for i, m := range []string{"tiny-a", "tiny-b", "tiny-a", "tiny-b", "tiny-a", "tiny-b"} {
		body := `{"model":"` + m + `","messages":[{"role":"user","content":"q` + string(rune('0'+i)) + `"}],"options":{"num_predict":8}}`
		ids = append(ids, tb.submit(t, m, broker.KindChat, body).ID)
	}
	tb.start(t, worker.Config{Inventory: inv})
	for _, id := range ids {
		if j := tb.waitState(t, id, broker.StateDone); len(j.Result) == 0 {
			t.Errorf("job %s: no result", id)
		}
	}
	// Drained by model: at most one switch between the two models.
	var order []string
	for _, id := range ids {
		j, _, _ := b.Store.Get(ctxT(t), id)
		order = append(order, j.StartedAt.Format("15:04:05.000000")+" "+j.Model)
	}
	slices.Sort(order)
	switches := 0
	for i := 1; i < len(order); i++ {
		if order[i][16:] != order[i-1][16:] {
			switches++
		}
	}
	if switches > 1 {
		t.Errorf("%d model switches, want ≤ 1: %v", switches, order)
	}
}
