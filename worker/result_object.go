package worker

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
)

// object is a JSON object that keeps its members in order: a result built from Ollama's
// final frame lists them as Ollama sent them, those foreman does not know included.
type object struct {
	keys []string
	vals map[string]json.RawMessage
}

// parseObject reads a JSON object, nil if b is not one.
func parseObject(b []byte) *object {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	o := &object{vals: map[string]json.RawMessage{}}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil
		}
		k := t.(string) // a member's name, as the decoder has checked
		if _, ok := o.vals[k]; !ok {
			o.keys = append(o.keys, k)
		}
		o.vals[k] = v // the last of a duplicated name counts, as for encoding/json
	}
	if _, err := dec.Token(); err != nil {
		return nil
	}
	return o
}

// put sets member k to v. A new member goes where Ollama's type has it: after the last
// member present that order (the type's member order) puts before it.
func (o *object) put(k string, v any, order []string) {
	raw, err := json.Marshal(v)
	if err != nil {
		return
	}
	o.dropVariants(k)
	if _, ok := o.vals[k]; !ok {
		at, pos := 0, slices.Index(order, k)
		for i, have := range o.keys {
			if p := slices.Index(order, have); p >= 0 && p < pos {
				at = i + 1
			}
		}
		o.keys = slices.Insert(o.keys, at, k)
	}
	o.vals[k] = raw
}

func (o *object) del(k string) {
	o.dropVariants(k)
	if _, ok := o.vals[k]; ok {
		delete(o.vals, k)
		o.keys = slices.DeleteFunc(o.keys, func(s string) bool { return s == k })
	}
}

// get returns member k as encoding/json reads it into a field named k: the value of the
// last member whose name is k but for case.
func (o *object) get(k string) json.RawMessage {
	var v json.RawMessage
	for _, have := range o.keys {
		if strings.EqualFold(have, k) {
			v = o.vals[have]
		}
	}
	return v
}

// dropVariants removes the members other than k whose names encoding/json reads as k
// (it matches names without case, as strings.EqualFold does). Left beside a member put,
// such a member ("Message" beside "message") is what a decoder reads when it comes
// later: a result's joined text would be read as a non-Ollama target's last line.
func (o *object) dropVariants(k string) {
	o.keys = slices.DeleteFunc(o.keys, func(have string) bool {
		if have != k && strings.EqualFold(have, k) {
			delete(o.vals, have)
			return true
		}
		return false
	})
}

func (o *object) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for i, k := range o.keys {
		if i > 0 {
			b = append(b, ',')
		}
		name, err := json.Marshal(k)
		if err != nil {
			return nil, err
		}
		b = append(append(append(b, name...), ':'), o.vals[k]...)
	}
	return append(b, '}'), nil
}

// reorder puts the members order names first, in its order; the others follow in theirs.
func (o *object) reorder(order []string) {
	rank := func(k string) int {
		if i := slices.Index(order, k); i >= 0 {
			return i
		}
		return len(order)
	}
	slices.SortStableFunc(o.keys, func(a, b string) int { return rank(a) - rank(b) })
}

// shapeMember calls shape on member k when it is an object, and keeps what it made.
func (o *object) shapeMember(k string, shape func(*object)) {
	if m := parseObject(o.vals[k]); m != nil {
		shape(m)
		o.put(k, m, nil)
	}
}

// shapeList calls shape on each element of member k when it is an array of objects, and
// keeps what it made.
func (o *object) shapeList(k string, shape func(*object)) {
	var list []json.RawMessage
	if json.Unmarshal(o.vals[k], &list) != nil || list == nil {
		return
	}
	out := make([]*object, len(list))
	for i, raw := range list {
		if out[i] = parseObject(raw); out[i] == nil {
			return
		}
		shape(out[i])
	}
	o.put(k, out, nil)
}
