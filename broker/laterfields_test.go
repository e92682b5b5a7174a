package broker_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A record a later foreman wrote may hold members this one does not know (a claim, a
// mark it added): this foreman's rewrites carry them on, also the rewrites of a record
// it wrote itself since (ModifyFrom), so that running beside a later foreman, or rolled
// back to, it does not drop what that one stored (an upgrade audit found an older
// foreman's start write dropping a later one's "idempotency").
func TestRewritesCarryALaterForemansMembers(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	kv := b.JobRecords(t)
	e, err := kv.Get(ctx, "job."+j.ID)
	if err != nil {
		t.Fatal(err)
	}
	later := bytes.TrimSuffix(bytes.TrimSpace(e.Value()), []byte("}"))
	later = append(later, []byte(`,"later_claim":{"ref":"abc","n":[1,2]},"later_mark":"x","ERROR":"before","\u017ftate":"done"}`)...)
	if _, err := kv.Update(ctx, "job."+j.ID, later, e.Revision()); err != nil {
		t.Fatal(err)
	}
	cur, rev, err := b.Store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	next, rev, err := b.Store.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error { j.Program = "p"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.ModifyFrom(ctx, next, rev, func(j *broker.Job) error { j.Error = "e"; return nil }); err != nil {
		t.Fatal(err)
	}
	e, err = kv.Get(ctx, "job."+j.ID)
	if err != nil {
		t.Fatal(err)
	}
	var stored map[string]json.RawMessage
	if err := json.Unmarshal(e.Value(), &stored); err != nil {
		t.Fatalf("record after two rewrites is no JSON object: %v: %s", err, e.Value())
	}
	if string(stored["later_claim"]) != `{"ref":"abc","n":[1,2]}` || string(stored["later_mark"]) != `"x"` ||
		string(stored["program"]) != `"p"` || string(stored["error"]) != `"e"` {
		t.Fatalf("record after two rewrites: %s; want the later members kept beside the writes", e.Value())
	}
	// A member Job has in another case is Job's (encoding/json reads it into Error):
	// carried after the error written, it would undo that write at the next read.
	if _, ok := stored["ERROR"]; ok || len(stored) != 11 {
		t.Fatalf("record after two rewrites: %s; a member known in another case carried on", e.Value())
	}
	got, err := broker.DecodeJob(e.Value())
	if err != nil || got.Error != "e" {
		t.Fatalf("record read back: error %q, %v; want the one written, e", got.Error, err)
	}
}
