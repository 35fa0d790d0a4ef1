package proto

import (
	"encoding/json"
	"reflect"
	"testing"
)

type member struct{ key, value string }

func fieldsOf(data string) ([]member, error) {
	var out []member
	err := Fields([]byte(data), func(k, v []byte) { out = append(out, member{string(k), string(v)}) })
	return out, err
}

func TestFields(t *testing.T) {
	tests := []struct {
		in   string
		want []member
		bad  bool
	}{
		{in: `{}`, want: nil},
		{in: ` { "cmd" : "add" , "friend":"bob" } `, want: []member{{"cmd", `"add"`}, {"friend", `"bob"`}}},
		{in: `{"a":{"b":[1,"}]",{"c":null}]},"d":-1.5e3,"e":true}`,
			want: []member{{"a", `{"b":[1,"}]",{"c":null}]}`}, {"d", `-1.5e3`}, {"e", `true`}}},
		{in: `{"k\u0065y":"v\"q","x":"a\\"}`, want: []member{{"key", `"v\"q"`}, {"x", `"a\\"`}}},
		{in: `{"User":"x","user":"y","user":"z"}`, want: []member{{"User", `"x"`}, {"user", `"y"`}, {"user", `"z"`}}},
		{in: `[1]`, bad: true},
		{in: `"s"`, bad: true},
		{in: `{"a":1`, bad: true},
		{in: `{"a":"unterminated}`, bad: true},
		{in: `{"a" 1}`, bad: true},
		{in: `{"a":1,}`, bad: true},
		{in: `{"a":}`, bad: true},
		{in: `{a:1}`, bad: true},
		{in: `{"a":1} x`, bad: true},
		{in: `{"a":[1,2}`, bad: true},
		{in: ``, bad: true},
	}
	for _, tc := range tests {
		got, err := fieldsOf(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("Fields(%s) = %v, %v; want %v, bad=%v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		raw  string
		want string
		ok   bool
	}{
		{`"plain"`, "plain", true},
		{`"小明"`, "小明", true},
		{`"esc\"aped\n"`, "esc\"aped\n", true},
		{`"\u003e"`, ">", true},
		{`42`, "", false},
		{`null`, "", false},
		{`"bad`, "", false},
		{"\"\xff\"", "\ufffd", true}, // as encoding/json decodes it
	}
	for _, tc := range tests {
		got, ok := String([]byte(tc.raw))
		if got != tc.want || ok != tc.ok {
			t.Errorf("String(%s) = %q, %v; want %q, %v", tc.raw, got, ok, tc.want, tc.ok)
		}
	}
}

// For any valid JSON object, Fields sees the same members as encoding/json.
func FuzzFields(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"b":"x","c":[{}],"d":{"e":"}"}}`, `{"k\"":"\\"}`, `{"a":1,"a":2}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]json.RawMessage
		validObject := json.Unmarshal(data, &want) == nil && want != nil
		got := map[string]string{}
		err := Fields(data, func(k, v []byte) { got[string(k)] = string(v) })
		if !validObject {
			return // no crash is all that is asked of garbage
		}
		if err != nil {
			t.Fatalf("Fields refused a valid object %q: %v", data, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: got %d members, want %d", data, len(got), len(want))
		}
		for k, v := range want {
			if got[k] != string(v) {
				t.Fatalf("%q: member %q = %s, want %s", data, k, got[k], v)
			}
		}
	})
}
