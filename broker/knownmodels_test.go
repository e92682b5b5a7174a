package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// A target's model list is stored under its name and read back normalized, with the
// server's time of the write; none stored is no list, and a list a job TTL old is none
// either, whatever the bucket still holds.
func TestKnownModelsRoundTripAndAge(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.JobTTL = time.Hour }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, ok, err := b.Store.RememberedModels(ctx, "studio"); ok || err != nil {
		t.Fatalf("nothing stored: ok %v, err %v", ok, err)
	}
	want := broker.KnownModels{Name: "studio.lan", URL: "http://studio.lan:11434", Models: []string{"alpha:latest", "beta:7b"}}
	if err := b.Store.RememberModels(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, ok, err := b.Store.RememberedModels(ctx, "studio.lan")
	if err != nil || !ok || got.Name != want.Name || got.URL != want.URL || !slices.Equal(got.Models, want.Models) ||
		time.Since(got.Written) > time.Minute || time.Until(got.Written) > time.Minute {
		t.Fatalf("read back %+v, ok %v, err %v; want %+v written now", got, ok, err, want)
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.KnownModelsBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil || st.TTL() != time.Hour || st.History() != 1 {
		t.Fatalf("bucket status %+v, %v: want the job TTL and one revision", st, err)
	}
	if si := st.(*jetstream.KeyValueBucketStatus).StreamInfo(); si.Config.Storage != jetstream.FileStorage {
		t.Errorf("bucket storage %v, want file", si.Config.Storage)
	}

	// Read a job TTL on by the server's clock: too old to stand for the target.
	later, err := broker.Open(ctx, broker.Config{Conn: b.Conn, JobTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	later.ShiftServerClock(time.Hour)
	if _, ok, err := later.RememberedModels(ctx, "studio.lan"); ok || err != nil {
		t.Fatalf("a list a job TTL old: ok %v, err %v; want none", ok, err)
	}
	// A foreman with a shorter job TTL does not cut the bucket's; a longer one raises it.
	for _, c := range []struct{ ttl, want time.Duration }{{10 * time.Minute, time.Hour}, {2 * time.Hour, 2 * time.Hour}} {
		s, err := broker.Open(ctx, broker.Config{Conn: b.Conn, JobTTL: c.ttl})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.RememberedModels(ctx, "studio.lan"); err != nil {
			t.Fatal(err)
		}
		if st, err := kv.Status(ctx); err != nil || st.TTL() != c.want {
			t.Fatalf("after a foreman with job TTL %v: bucket TTL %v (%v), want %v", c.ttl, st.TTL(), err, c.want)
		}
	}
}

// What another process wrote under a target's key is read within bounds and used only
// when it is a list this version of foreman writes, for that very target: anything else
// is an error wrapping ErrBadKnownModels, and no list.
func TestKnownModelsHostileEntriesAreNotUsed(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Store.RememberModels(ctx, broker.KnownModels{Name: "mac", URL: "http://mac:11434"}); err != nil {
		t.Fatal(err) // creates the bucket
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.KnownModelsBucket)
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, 5000)
	for i := range many {
		many[i] = fmt.Sprintf("%q", fmt.Sprintf("m%d", i))
	}
	for _, c := range []struct{ name, value string }{
		{"not JSON", `{"v":1,"name":"mac","models":["a"`},
		{"not an object", `["a:latest"]`},
		{"another layout", `{"v":2,"name":"mac","url":"http://mac:11434","models":["a:latest"]}`},
		{"no layout", `{"name":"mac","url":"http://mac:11434","models":["a:latest"]}`},
		{"another target's name", `{"v":1,"name":"mac.","url":"http://mac:11434","models":["a:latest"]}`},
		{"a model that is none", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest","  "]}`},
		{"a model too long", `{"v":1,"name":"mac","url":"http://mac:11434","models":["` + strings.Repeat("a", 300) + `"]}`},
		{"models not strings", `{"v":1,"name":"mac","url":"http://mac:11434","models":[1,2]}`},
		{"too many models", `{"v":1,"name":"mac","url":"http://mac:11434","models":[` + strings.Join(many, ",") + `]}`},
		{"too large", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"],"pad":"` + strings.Repeat("x", 300<<10) + `"}`},
		{"an alias without a target", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"],"aliases":[{"alias":"x"}]}`},
		{"an alias without a name", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"],"aliases":[{"target":"a"}]}`},
		{"an alias too long", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"],"aliases":[{"alias":"` + strings.Repeat("a", 300) + `","target":"a"}]}`},
		{"aliases not objects", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"],"aliases":["x"]}`},
		{"too many aliases", `{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"],"aliases":[` + strings.Repeat(`{"alias":"x","target":"a"},`, 5000) + `{"alias":"x","target":"a"}]}`},
	} {
		if _, err := kv.Put(ctx, "target.mac", []byte(c.value)); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got, ok, err := b.Store.RememberedModels(ctx, "mac")
		if ok || !errors.Is(err, broker.ErrBadKnownModels) {
			t.Errorf("%s: got %+v, ok %v, err %v; want ErrBadKnownModels and no list", c.name, got, ok, err)
		}
	}

	// Written by a version before aliases: no aliases, the list stands.
	if _, err := kv.Put(ctx, "target.mac", []byte(`{"v":1,"name":"mac","url":"http://mac:11434","models":["a:latest"]}`)); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := b.Store.RememberedModels(ctx, "mac"); err != nil || !ok || len(got.Aliases) != 0 || !slices.Equal(got.Models, []string{"a:latest"}) {
		t.Fatalf("a list without aliases: got %+v, ok %v, err %v", got, ok, err)
	}

	// Written by a later version with fields this one does not know: the list stands.
	if _, err := kv.Put(ctx, "target.mac", []byte(`{"v":1,"name":"mac","url":"http://mac:11434","models":["B","a:latest","b:latest"],"digest":"x"}`)); err != nil {
		t.Fatal(err)
	}
	got, ok, err := b.Store.RememberedModels(ctx, "mac")
	if err != nil || !ok || !slices.Equal(got.Models, []string{"a:latest", "b:latest"}) {
		t.Fatalf("extra fields: got %+v, ok %v, err %v", got, ok, err)
	}

	// Two names that differ only where a key cannot hold them share a key: one is not
	// taken for the other.
	if err := b.Store.RememberModels(ctx, broker.KnownModels{Name: "mac_lan", URL: "http://mac:11434", Models: []string{"a:latest"}}); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := b.Store.RememberedModels(ctx, "mac.lan"); ok || !errors.Is(err, broker.ErrBadKnownModels) {
		t.Fatalf("mac.lan read mac_lan's list: %+v, ok %v, err %v", got, ok, err)
	}

	// What a reader would refuse is not written either.
	huge := make([]string, 5000)
	for i := range huge {
		huge[i] = fmt.Sprintf("m%d:latest", i)
	}
	if err := b.Store.RememberModels(ctx, broker.KnownModels{Name: "mac", URL: "http://mac:11434", Models: huge}); !errors.Is(err, broker.ErrBadKnownModels) {
		t.Fatalf("storing 5000 models: %v, want ErrBadKnownModels", err)
	}
}

// A target's aliases are stored with its models and read back as listed (the order of
// equal prefixes decides between them); one a reader would refuse is left out, and the
// rest of the list stands; aliases too many, or too large to fit beside the models, are
// all left out, and the models stored.
func TestKnownModelsKeepTheAliases(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	aliases := []ollama.Alias{
		{Alias: "claude-sonnet-", Target: "tiny-b", PrefixMatching: true},
		{Alias: "fast", Target: "tiny-a:latest"},
		{Alias: "claude-haiku-", Target: "tiny-a", PrefixMatching: true},
	}
	long := ollama.Alias{Alias: strings.Repeat("a", 300), Target: "tiny-a"}
	in := broker.KnownModels{Name: "mac", URL: "http://mac:11434", Models: []string{"tiny-a:latest", "tiny-b:latest"},
		Aliases: slices.Insert(slices.Clone(aliases), 1, long)}
	if err := b.Store.RememberModels(ctx, in); err != nil {
		t.Fatal(err)
	}
	if in.Aliases[1] != long {
		t.Fatal("RememberModels changed its caller's aliases")
	}
	got, ok, err := b.Store.RememberedModels(ctx, "mac")
	if err != nil || !ok || !slices.Equal(got.Aliases, aliases) || !slices.Equal(got.Models, in.Models) {
		t.Fatalf("read back %+v, ok %v, err %v; want the aliases %+v without the long one", got, ok, err, aliases)
	}

	many := make([]ollama.Alias, 5000)
	for i := range many {
		many[i] = ollama.Alias{Alias: fmt.Sprintf("a%d", i), Target: "tiny-a"}
	}
	large := make([]ollama.Alias, 1000) // 150-byte names: over 256 KiB in all
	for i := range large {
		large[i] = ollama.Alias{Alias: fmt.Sprintf("%0150d", i), Target: strings.Repeat("t", 150)}
	}
	for name, as := range map[string][]ollama.Alias{"too many": many, "too large": large} {
		if err := b.Store.RememberModels(ctx, broker.KnownModels{Name: "mac", URL: "http://mac:11434", Models: []string{"tiny-a:latest"}, Aliases: as}); err != nil {
			t.Fatalf("%s aliases: %v", name, err)
		}
		got, ok, err := b.Store.RememberedModels(ctx, "mac")
		if err != nil || !ok || len(got.Aliases) != 0 || !slices.Equal(got.Models, []string{"tiny-a:latest"}) {
			t.Fatalf("%s aliases: read back %d aliases, models %v, ok %v, err %v; want the models without aliases", name, len(got.Aliases), got.Models, ok, err)
		}
	}
}

// The bounds on aliases are inclusive, for the writer and the reader alike: names of
// maxModelLen bytes and maxKnownModels aliases are kept, one byte or one alias more is not.
func TestKnownModelsAliasBounds(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const maxLen, maxAliases = 150, 4096
	atMax := ollama.Alias{Alias: strings.Repeat("a", maxLen), Target: strings.Repeat("t", maxLen)}
	longTarget := ollama.Alias{Alias: "b", Target: strings.Repeat("t", maxLen+1)}
	longAlias := ollama.Alias{Alias: strings.Repeat("c", maxLen+1), Target: "t"}
	in := broker.KnownModels{Name: "mac", URL: "http://mac:11434", Models: []string{"t:latest"}, Aliases: []ollama.Alias{atMax, longTarget, longAlias}}
	if err := b.Store.RememberModels(ctx, in); err != nil {
		t.Fatal(err)
	}
	got, ok, err := b.Store.RememberedModels(ctx, "mac")
	if err != nil || !ok || !slices.Equal(got.Aliases, []ollama.Alias{atMax}) {
		t.Fatalf("names at and past the bound: read back %+v, ok %v, err %v; want the %d-byte one only", got.Aliases, ok, err, maxLen)
	}

	aliases := func(n int) []ollama.Alias {
		as := make([]ollama.Alias, n)
		for i := range as {
			as[i] = ollama.Alias{Alias: fmt.Sprintf("a%d", i), Target: "t"}
		}
		return as
	}
	for n, want := range map[int]int{maxAliases: maxAliases, maxAliases + 1: 0} {
		in.Aliases = aliases(n)
		if err := b.Store.RememberModels(ctx, in); err != nil {
			t.Fatalf("%d aliases: %v", n, err)
		}
		got, ok, err := b.Store.RememberedModels(ctx, "mac")
		if err != nil || !ok || len(got.Aliases) != want {
			t.Fatalf("%d aliases: read back %d, ok %v, err %v; want %d", n, len(got.Aliases), ok, err, want)
		}
	}

	// What another writer stored past the bounds is refused by the reader.
	kv, err := b.JetStream(t).KeyValue(ctx, broker.KnownModelsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for name, as := range map[string][]ollama.Alias{
		"a target one byte too long": {atMax, longTarget},
		"an alias one byte too long": {longAlias},
		"one alias too many":         aliases(maxAliases + 1),
	} {
		v, err := json.Marshal(map[string]any{"v": 1, "name": "mac", "url": "http://mac:11434", "models": []string{"t:latest"}, "aliases": as})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "target.mac", v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got, ok, err := b.Store.RememberedModels(ctx, "mac"); ok || !errors.Is(err, broker.ErrBadKnownModels) {
			t.Errorf("%s: read back %d aliases, ok %v, err %v; want ErrBadKnownModels", name, len(got.Aliases), ok, err)
		}
	}
}
