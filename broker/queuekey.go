package broker

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// DefaultLoadOptions is the load-options token of a request that sets none of the options
// that make Ollama reload a model.
const DefaultLoadOptions = "d"

// AnonymousProgram is the program token of jobs that name no program.
const AnonymousProgram = "_"

// QueueKey is where a job waits: its model, the load options its runner needs, its class
// and its program. Its String is the tail of the queue subject. A job with every dimension
// at its default (no load options, normal, anonymous) waits on the model's plain subject,
// foreman.queue.<model-token>, as every job did before classes; the others on
// foreman.queue.<model-token>.<load-opts>.<class>.<program-token>.
type QueueKey struct {
	Model   string // model token (ModelToken)
	Opts    string // DefaultLoadOptions or LoadOptionsToken's hash
	Class   Priority
	Program string // program token: AnonymousProgram or lower-case base32 of the name
}

// String is the subject tail of the key.
func (k QueueKey) String() string {
	if k.Opts == DefaultLoadOptions && k.Class == PriorityNormal && k.Program == AnonymousProgram {
		return k.Model
	}
	return k.Model + "." + k.Opts + "." + string(k.Class) + "." + k.Program
}

// Runner names the model runner a job needs: jobs of one runner run without a reload.
func (k QueueKey) Runner() string { return RunnerKey(k.Model, k.Opts) }

// RunnerKey is the runner of a model token loaded with load options opts.
func RunnerKey(model, opts string) string { return model + "." + opts }

// ProgramName is the program's name, "" for the anonymous one.
func (k QueueKey) ProgramName() string {
	if k.Program == AnonymousProgram {
		return ""
	}
	b, _ := tokenEncoding.DecodeString(strings.ToUpper(k.Program))
	return string(b)
}

// ParseQueueKey reads a queue subject's tail (TokenFromSubject). It accepts only keys
// foreman makes: a plain model token, or the four-token form with the plain form's
// defaults spelled out nowhere.
func ParseQueueKey(s string) (QueueKey, error) {
	parts := strings.Split(s, ".")
	bad := func(why string) (QueueKey, error) {
		return QueueKey{}, fmt.Errorf("%w: queue key %q: %s", ErrUnusable, s, why)
	}
	if !modelTokenValid(parts[0]) {
		return bad("no model token")
	}
	if len(parts) == 1 {
		return QueueKey{Model: parts[0], Opts: DefaultLoadOptions, Class: PriorityNormal, Program: AnonymousProgram}, nil
	}
	if len(parts) != 4 {
		return bad("want 1 or 4 tokens")
	}
	k := QueueKey{Model: parts[0], Opts: parts[1], Class: Priority(parts[2]), Program: parts[3]}
	if k.Opts != DefaultLoadOptions && !optsTokenValid(k.Opts) {
		return bad("bad load options")
	}
	if _, err := ParsePriority(parts[2]); err != nil {
		return bad("bad class")
	}
	if k.Program != AnonymousProgram {
		if t, err := programToken(k.ProgramName()); err != nil || t != k.Program {
			return bad("bad program")
		}
	}
	if k.String() != s {
		return bad("default key in the long form")
	}
	return k, nil
}

// KeyOf returns the queue key of job j with request body body. The load options come
// from j.LoadOptions when the submitter read them already, else from body; a job of a
// kind whose route reads no "options" (the OpenAI ones) runs with the default ones.
func KeyOf(j *Job, body []byte) (QueueKey, error) {
	model, err := ModelToken(j.Model)
	if err != nil {
		return QueueKey{}, err
	}
	class := j.Priority.OrNormal()
	if _, err := ParsePriority(string(class)); err != nil {
		return QueueKey{}, err
	}
	prog, err := programToken(j.Program)
	if err != nil {
		return QueueKey{}, err
	}
	opts := j.LoadOptions
	switch {
	case !j.Kind.ReadsOptions():
		opts = DefaultLoadOptions
	case opts == "":
		opts = LoadOptionsToken(body)
	}
	return QueueKey{Model: model, Opts: opts, Class: class, Program: prog}, nil
}

func programToken(name string) (string, error) {
	if name == "" {
		return AnonymousProgram, nil
	}
	if err := ValidateProgram(name); err != nil {
		return "", err
	}
	return strings.ToLower(tokenEncoding.EncodeToString([]byte(name))), nil
}

// loadOptionNames are the request options Ollama (v0.17, server/sched.go needsReload)
// compares with a loaded runner's: api.Runner's fields. Any difference reloads the model.
var loadOptionNames = []string{"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}

// optsTokenLen is the length of a load-options hash token (10 bytes of SHA-256).
const optsTokenLen = 16

// LoadOptionsToken returns the token of the load options a request body sets: "d" when it
// sets none, else a short lower-case base32 hash of them, normalised as Ollama reads them
// (loadOptionsKey). A body that is no JSON object, or options Ollama would refuse, count
// as none: such a request loads nothing.
func LoadOptionsToken(body []byte) string {
	var req struct {
		Options LoadOptions `json:"options"`
	}
	if json.Unmarshal(body, &req) != nil {
		return DefaultLoadOptions
	}
	return req.Options.Token()
}

// LoadOptions is a request's "options" member as Ollama decodes it (into a map; a
// repeated member adds to it, a null one clears it), for a caller that decodes the body
// itself: a field of this type in its request struct never fails the decode, and Token
// is then LoadOptionsToken of the body without reading it again.
type LoadOptions struct {
	set map[string]any
	bad bool // a value Ollama would refuse: the request loads nothing
	// notObject is the JSON type of the first value that was no object or null, as
	// encoding/json names it ("string", "number", "bool", "array"); "" when none was.
	notObject string
}

// UnmarshalJSON decodes an "options" value; one Ollama would refuse marks the options
// unusable instead of failing the caller's decode.
func (o *LoadOptions) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &o.set); err != nil {
		o.bad = true
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && o.notObject == "" {
			o.notObject = te.Value
		}
	}
	return nil
}

// NotAnObject is the JSON type ("string", "number", "bool", "array") of an "options" value
// that is no object or null, which Ollama's decoder refuses (400) before its handler
// reads anything; "" when every value was an object or null.
func (o LoadOptions) NotAnObject() string { return o.notObject }

// optionTypes are the types Ollama (v0.17.4 api.Options and api.Runner) gives the
// request options it knows, as its refusals name them; options it does not know it
// ignores.
var optionTypes = map[string]string{
	"num_ctx": "integer", "num_batch": "integer", "num_gpu": "integer", "main_gpu": "integer",
	"num_thread": "integer", "num_keep": "integer", "seed": "integer", "num_predict": "integer",
	"top_k": "integer", "repeat_last_n": "integer",
	"top_p": "float32", "min_p": "float32", "typical_p": "float32", "temperature": "float32",
	"repeat_penalty": "float32", "presence_penalty": "float32", "frequency_penalty": "float32",
	"use_mmap": "boolean", "stop": "array",
}

// Refused is the error with which Ollama's handler refuses these options (api.Options
// FromMap, word for word: `option "num_ctx" must be of type integer`), nil when it takes
// them. Ollama answers it 500 after the request was taken (a job that could only fail);
// of several, it names the first in name order (Ollama: any). Options that are no JSON
// object are left to the target, whose decode refuses them (400).
func (o LoadOptions) Refused() error {
	for _, name := range slices.Sorted(maps.Keys(o.set)) {
		typ, known := optionTypes[name]
		v := o.set[name]
		if !known || v == nil {
			continue
		}
		ok := true
		switch typ {
		case "integer", "float32":
			_, ok = v.(float64)
		case "boolean":
			_, ok = v.(bool)
		case "array":
			items, isArray := v.([]any)
			if !isArray {
				ok = false
				break
			}
			for _, item := range items {
				if _, isString := item.(string); !isString {
					return fmt.Errorf("option %q must be of an array of strings", name)
				}
			}
		}
		if !ok {
			return fmt.Errorf("option %q must be of type %s", name, typ)
		}
	}
	return nil
}

// Token is the load-options token (see LoadOptionsToken).
func (o LoadOptions) Token() string {
	key := o.key()
	if key == "" {
		return DefaultLoadOptions
	}
	sum := sha256.Sum256([]byte(key))
	return strings.ToLower(tokenEncoding.EncodeToString(sum[:10]))
}

// key is the options' runner as Ollama 0.17.4 compares it, "" for the default one:
// "name=value;" for each load option that differs from a request that sets none, in name
// order. Ollama's rules (api/types.go Options.FromMap, server/sched.go GetRunner and
// needsReload):
//   - a null value leaves the default; an integer option must be a JSON number (read as
//     int64(float64), fractions truncated toward zero) and use_mmap a boolean, else the
//     request is refused (and loads nothing);
//   - num_ctx is raised to at least 4 (so 0 means 4, not "the default"); it is keyed
//     whenever set, as its default depends on the target's memory and the Modelfile;
//   - a negative num_gpu is never compared (the runner's is used);
//   - num_batch 512, main_gpu 0 and num_thread 0 are the defaults; use_mmap has none
//     (unset), so either boolean is keyed.
//
// Not modelled: a vision model's num_ctx floor of 2048, and Modelfile parameters, which
// make a request equal to the model's own setting a runner of its own for foreman (never a
// hidden reload, at worst a drain group split in two).
func (o LoadOptions) key() string {
	if o.bad || len(o.set) == 0 {
		return ""
	}
	norm := map[string]any{}
	for _, name := range loadOptionNames {
		v := o.set[name]
		if v == nil {
			continue
		}
		if name == "use_mmap" {
			b, ok := v.(bool)
			if !ok {
				return "" // refused by Ollama
			}
			norm[name] = b
			continue
		}
		f, ok := v.(float64)
		if !ok {
			return "" // refused by Ollama
		}
		n := int64(f)
		switch {
		case name == "num_ctx":
			n = max(n, 4)
		case name == "num_gpu" && n < 0,
			name == "num_batch" && n == 512,
			(name == "main_gpu" || name == "num_thread") && n == 0:
			continue
		}
		norm[name] = n
	}
	if len(norm) == 0 {
		return ""
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(norm)) {
		fmt.Fprintf(&b, "%s=%v;", name, norm[name])
	}
	return b.String()
}

func optsTokenValid(s string) bool {
	if len(s) != optsTokenLen {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
