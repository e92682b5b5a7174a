package ollamatest

import (
	"encoding/json"
	"hash/fnv"
	"strconv"
)

var words = []string{
	"amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor",
	"indigo", "juniper", "kelp", "lagoon", "meadow", "nimbus", "orchid", "pebble",
	"quartz", "raven", "sierra", "tundra", "umber", "violet", "willow", "xenon",
	"yarrow", "zephyr", "aspen", "birch", "cobalt", "dune", "echo", "flint",
}

func hash64(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	return h.Sum64()
}

// Reply returns the tokens the fake generates for model and prompt: n words
// chosen by hashing, the first bare and the rest with a leading space.
// Tests can compute the expected reply with it.
func Reply(model, prompt string, n int) []string {
	out := make([]string, n)
	for i := range out {
		w := words[hash64(model, prompt, strconv.Itoa(i))%uint64(len(words))]
		if i > 0 {
			w = " " + w
		}
		out[i] = w
	}
	return out
}

// Vector returns the fake's 8-dimensional embedding of input under model.
func Vector(model, input string) []float64 {
	v := make([]float64, 8)
	for i := range v {
		h := hash64(model, input, strconv.Itoa(i))
		v[i] = float64(int64(h%2001)-1000) / 1000 // in [-1, 1], three decimals
	}
	return v
}

// logprobs returns, when asked (the request's "logprobs"), Ollama's logprobs of toks: one
// entry a token, as each stream frame carries its own and a non-streamed answer all.
func logprobs(asked bool, toks ...string) json.RawMessage {
	if !asked || len(toks) == 0 {
		return nil
	}
	type logprob struct {
		Token   string  `json:"token"`
		Logprob float64 `json:"logprob"`
		Bytes   []int   `json:"bytes,omitempty"`
	}
	out := make([]logprob, 0, len(toks))
	for _, t := range toks {
		lp := logprob{Token: t, Logprob: -float64(hash64(t)%1000) / 1000}
		for _, c := range []byte(t) {
			lp.Bytes = append(lp.Bytes, int(c))
		}
		out = append(out, lp)
	}
	b, _ := json.Marshal(out)
	return b
}

// numPredict reads options.num_predict, or returns def.
func numPredict(options json.RawMessage, def int) int {
	var o struct {
		NumPredict *int `json:"num_predict"`
	}
	if len(options) > 0 && json.Unmarshal(options, &o) == nil && o.NumPredict != nil && *o.NumPredict > 0 {
		return *o.NumPredict
	}
	return def
}

// capTokens applies Config.MaxTokens to a reply of n tokens.
func (s *Server) capTokens(n int) int {
	if s.cfg.MaxTokens > 0 {
		return min(n, s.cfg.MaxTokens)
	}
	return n
}

// isZeroKeepAlive reports keep_alive 0, "0" or "0s": Ollama's unload request.
func isZeroKeepAlive(raw json.RawMessage) bool {
	switch string(raw) {
	case "0", `"0"`, `"0s"`, `"0m"`:
		return true
	}
	return false
}

func join(toks []string) string {
	n := 0
	for _, t := range toks {
		n += len(t)
	}
	b := make([]byte, 0, n)
	for _, t := range toks {
		b = append(b, t...)
	}
	return string(b)
}
