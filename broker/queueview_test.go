package broker

import (
	"maps"
	"testing"
)

// An indexed view finds each waiting job, and counts the depth per model, as a pass over
// its lists does: GET /jobs/{id} and GET /queue read them from it.
func TestQueueViewIndexedFindsAsTheListsSay(t *testing.T) {
	v := &QueueView{
		// A job with two messages in the queue (a requeue's old one not yet removed) is
		// listed twice: "b" at positions 2 and 4. "c", in both lists, is found as the scan
		// finds it too.
		Queued: []QueuedJob{{JobID: "a", Model: "Tiny-A", QueuePosition: 1}, {JobID: "b", Model: "tiny-a:latest", QueuePosition: 2},
			{JobID: "c", Model: "tiny-b", QueuePosition: 3}, {JobID: "b", Model: "tiny-a:latest", QueuePosition: 4}},
		WaitingElsewhere: []QueuedJob{{JobID: "d", Model: "big"}, {JobID: "e", Model: "tiny-b:latest"}, {JobID: "c", Model: "tiny-b"}},
	}
	plainDepth := v.Depth()
	type found struct {
		j             QueuedJob
		elsewhere, ok bool
	}
	plain := map[string]found{}
	for _, id := range []string{"a", "b", "c", "d", "e", "zz", ""} {
		j, elsewhere, ok := v.Find(id)
		plain[id] = found{j, elsewhere, ok}
	}
	v.Indexed()
	for id, want := range plain {
		if j, elsewhere, ok := v.Find(id); j != want.j || elsewhere != want.elsewhere || ok != want.ok {
			t.Errorf("Find(%q) indexed = %+v %v %v, by the lists %+v", id, j, elsewhere, ok, want)
		}
	}
	if j, elsewhere, ok := v.Find("b"); !ok || elsewhere || j.QueuePosition != 2 {
		t.Errorf("Find(b) = %+v %v %v", j, elsewhere, ok)
	}
	if _, elsewhere, ok := v.Find("e"); !ok || !elsewhere {
		t.Errorf("Find(e): elsewhere %v ok %v", elsewhere, ok)
	}
	if j, elsewhere, ok := v.Find("c"); !ok || elsewhere || j.QueuePosition != 3 {
		t.Errorf("Find(c) = %+v %v %v, want its place in Queued", j, elsewhere, ok)
	}
	want := map[string]int{"tiny-a:latest": 3, "tiny-b:latest": 3, "big:latest": 1}
	if got := v.Depth(); !maps.Equal(got, want) || !maps.Equal(plainDepth, want) {
		t.Errorf("depth indexed %v, by the lists %v, want %v", got, plainDepth, want)
	}
}
