package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// KnownModelsBucket keeps, per target name, the models its foreman last polled there, so
// that a foreman started while its Ollama is down still queues jobs for them (ADR-0047),
// and the aliases it last read there, which name them (ADR-0068).
// An entry lives a job TTL after its last write: no job older than that waits for it.
const KnownModelsBucket = "FOREMAN_KNOWN_MODELS"

// knownModelsVersion is the layout of a KnownModelsBucket value this foreman writes and
// reads; a value of another is ignored, never guessed at.
const knownModelsVersion = 1

// Bounds on what a KnownModelsBucket value may hold. An Ollama lists a few dozen models;
// a value past these was not written by a foreman, and reading it must not cost more.
const (
	maxKnownModelsBytes = 256 << 10
	maxKnownModels      = 4096
)

// KnownModels is the model list a foreman last polled at its target.
type KnownModels struct {
	// Name is the target's name (FOREMAN_TARGET_NAME).
	Name string
	// URL is the target's address without credentials: the list holds for it only.
	URL string
	// Models are normalized model names, sorted, each once.
	Models []string
	// Aliases are the target's model aliases, as listed (the order of prefixes of one
	// length decides between them). A list stored by a foreman from before aliases were
	// remembered has none.
	Aliases []ollama.Alias
	// Written is when the list was stored (the server's time of the write); set by
	// RememberedModels.
	Written time.Time
}

// knownModelsValue is a KnownModelsBucket value.
type knownModelsValue struct {
	V      int      `json:"v"`
	Name   string   `json:"name"`
	URL    string   `json:"url"`
	Models []string `json:"models"`
	// Aliases is a member a foreman from before aliases were remembered neither writes
	// nor reads: the layout version stays.
	Aliases []ollama.Alias `json:"aliases,omitempty"`
	// Written is for people reading the bucket; readers go by the server's time.
	Written time.Time `json:"written"`
}

// ErrBadKnownModels is (wrapped in) the error of a KnownModelsBucket value that cannot be
// used: it is ignored.
var ErrBadKnownModels = errors.New("unusable known model list")

func (s *Store) knownModelsKV(ctx context.Context) (jetstream.KeyValue, error) {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if s.known != nil {
		return s.known, nil
	}
	// As TargetsBucket's TTL: only ever raised, so that a foreman with a shorter job TTL
	// does not cut the others' lists short; each reader goes by its own (RememberedModels).
	kv, err := raisedTTLBucket(ctx, s.js, jetstream.KeyValueConfig{
		Bucket:      KnownModelsBucket,
		Description: "foreman Ollama targets: the models last polled, by name, kept across restarts",
		History:     1,
		TTL:         s.cfg.JobTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    s.cfg.Replicas,
	})
	if err != nil {
		return nil, err
	}
	s.known = kv
	return kv, nil
}

// rememberableAlias reports whether a is within the bounds a reader keeps to. Its names
// are only bounded: a prefix need not be a model name ("claude-sonnet-"), and each is
// resolved as Ollama does when a call names a model (ollama.NewAliasTable).
func rememberableAlias(a ollama.Alias) bool {
	return a.Alias != "" && a.Target != "" && len(a.Alias) <= maxModelLen && len(a.Target) <= maxModelLen
}

// RememberModels stores k as the models last polled at target k.Name. A list past the
// bounds a reader keeps to is refused with ErrBadKnownModels rather than stored unread.
// The models are what the list is for: an alias past those bounds is left out, and so
// are all of them when they are too many or would not fit beside the models (they stay
// in use while the target is polled).
func (s *Store) RememberModels(ctx context.Context, k KnownModels) error {
	if len(k.Models) > maxKnownModels {
		return fmt.Errorf("broker: remember models of %s: %w: %d models, more than %d", k.Name, ErrBadKnownModels, len(k.Models), maxKnownModels)
	}
	k.Aliases = slices.DeleteFunc(slices.Clone(k.Aliases), func(a ollama.Alias) bool { return !rememberableAlias(a) })
	if len(k.Aliases) > maxKnownModels {
		k.Aliases = nil
	}
	value := func() ([]byte, error) {
		return json.Marshal(knownModelsValue{V: knownModelsVersion, Name: k.Name, URL: k.URL, Models: k.Models, Aliases: k.Aliases, Written: s.Now()})
	}
	v, err := value()
	if err == nil && len(v) > maxKnownModelsBytes && len(k.Aliases) > 0 {
		k.Aliases = nil
		v, err = value()
	}
	if err != nil {
		return err
	}
	if len(v) > maxKnownModelsBytes {
		return fmt.Errorf("broker: remember models of %s: %w: %d bytes, more than %d", k.Name, ErrBadKnownModels, len(v), maxKnownModelsBytes)
	}
	kv, err := s.knownModelsKV(ctx)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, targetKey(k.Name), v); err != nil {
		return fmt.Errorf("broker: remember models of %s: %w", k.Name, err)
	}
	return nil
}

// RememberedModels returns the models last stored for target name, with its aliases; ok
// is false when there is no list, or it is a job TTL old. A value that cannot be used (too
// large, not JSON, another layout's, another name's, a model name that is none, an alias
// past the bounds) is an error wrapping ErrBadKnownModels.
func (s *Store) RememberedModels(ctx context.Context, name string) (k KnownModels, ok bool, err error) {
	kv, err := s.knownModelsKV(ctx)
	if err != nil {
		return KnownModels{}, false, err
	}
	e, err := kv.Get(ctx, targetKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return KnownModels{}, false, nil
	}
	if err != nil {
		return KnownModels{}, false, fmt.Errorf("broker: read known models of %s: %w", name, err)
	}
	if s.ServerNow().Sub(e.Created()) >= s.cfg.JobTTL {
		return KnownModels{}, false, nil // the bucket keeps the longest TTL of its foremen
	}
	k, err = parseKnownModels(e.Value(), name)
	if err != nil {
		return KnownModels{}, false, fmt.Errorf("broker: known models of %s: %w: %w", name, ErrBadKnownModels, err)
	}
	k.Written = e.Created().UTC()
	return k, true, nil
}

// parseKnownModels reads a KnownModelsBucket value stored for target name, within the
// bounds, its models normalized, sorted and each once.
func parseKnownModels(raw []byte, name string) (KnownModels, error) {
	if len(raw) > maxKnownModelsBytes {
		return KnownModels{}, fmt.Errorf("%d bytes, more than %d", len(raw), maxKnownModelsBytes)
	}
	var v knownModelsValue
	if err := json.Unmarshal(raw, &v); err != nil {
		return KnownModels{}, fmt.Errorf("not JSON: %w", err)
	}
	switch {
	case v.V != knownModelsVersion:
		return KnownModels{}, fmt.Errorf("layout version %d, not %d", v.V, knownModelsVersion)
	case v.Name != name:
		// Names that differ only where a key cannot hold them share a key.
		return KnownModels{}, fmt.Errorf("stored for target %q", v.Name)
	case len(v.Models) > maxKnownModels:
		return KnownModels{}, fmt.Errorf("%d models, more than %d", len(v.Models), maxKnownModels)
	case len(v.Aliases) > maxKnownModels:
		return KnownModels{}, fmt.Errorf("%d aliases, more than %d", len(v.Aliases), maxKnownModels)
	}
	for _, a := range v.Aliases {
		if !rememberableAlias(a) {
			return KnownModels{}, fmt.Errorf("alias %.40q to %.40q", a.Alias, a.Target)
		}
	}
	models := make([]string, 0, len(v.Models))
	for _, m := range v.Models {
		n := ollama.NormalizeModel(m)
		if n == "" || len(n) > maxModelLen {
			return KnownModels{}, fmt.Errorf("model name %.40q", m)
		}
		models = append(models, n)
	}
	slices.Sort(models)
	return KnownModels{Name: v.Name, URL: v.URL, Models: slices.Compact(models), Aliases: v.Aliases}, nil
}
