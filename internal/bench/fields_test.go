package bench

import (
	"encoding/json"
	"testing"
	"unicode/utf8"
)

func TestFieldsParse(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		wantErr bool
		cmd     string
		result  string
		text    string
		port    string
		length  string
		lenStr  bool
	}{
		{name: "delivery", line: `{"cmd":"private_chat","user_from":"a","user_to":"b","text":"0:1:2","time":1700000000000,"msg_id":"x"}`,
			cmd: "private_chat", text: "0:1:2"},
		{name: "reply cmd is not the message cmd", line: `{"cmd":"private_chat_reply","result":"success","user_to":"b"}`,
			cmd: "private_chat_reply", result: "success"},
		{name: "whitespace everywhere", line: " {\t\"cmd\" : \"pong\" ,\r\n \"result\":\"x\" } \r",
			cmd: "pong", result: "x"},
		{name: "escapes decoded", line: `{"cmd":"a\"b","text":"\u5c0f\u660e\\"}`, cmd: `a"b`, text: `小明\`},
		{name: "nested values skipped", line: `{"x":{"cmd":"no","y":[1,"}",{"z":"]"}]},"cmd":"yes","n":null,"t":true}`, cmd: "yes"},
		{name: "port as number, length as string", line: `{"cmd":"send_file_port_reply","port":20001,"length":"65536"}`,
			cmd: "send_file_port_reply", port: "20001", length: "65536", lenStr: true},
		{name: "length as number", line: `{"length":-12.5e3}`, length: "-12.5e3"},
		{name: "non-string cmd reads as absent", line: `{"cmd":5,"result":["success"]}`},
		{name: "empty object", line: `{}`},
		{name: "empty", line: ``, wantErr: true},
		{name: "not an object", line: `["cmd"]`, wantErr: true},
		{name: "truncated", line: `{"cmd":"priv`, wantErr: true},
		{name: "truncated after key", line: `{"cmd"`, wantErr: true},
		{name: "truncated after colon", line: `{"cmd":`, wantErr: true},
		{name: "missing colon", line: `{"cmd" "x"}`, wantErr: true},
		{name: "trailing garbage", line: `{"cmd":"x"} y`, wantErr: true},
		{name: "two objects", line: `{"cmd":"x"}{"cmd":"y"}`, wantErr: true},
		{name: "control character in string", line: "{\"cmd\":\"a\x01\"}", wantErr: true},
		{name: "unterminated nested", line: `{"a":{"b":[1,2}`, wantErr: true},
		{name: "bad escape", line: `{"cmd":"\q"}`, wantErr: true},
		{name: "backslash at end", line: `{"cmd":"\`, wantErr: true},
		{name: "trailing comma", line: `{"cmd":"x",}`, wantErr: true},
		{name: "bare word value", line: `{"cmd":}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f Fields
			err := f.Parse([]byte(tt.line))
			if (err != nil) != tt.wantErr {
				t.Fatalf("error %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if string(f.Cmd) != tt.cmd || string(f.Result) != tt.result || string(f.Text) != tt.text ||
				string(f.Port) != tt.port || string(f.Length) != tt.length || f.LengthIsString != tt.lenStr {
				t.Errorf("got cmd=%q result=%q text=%q port=%q length=%q(str %v)", f.Cmd, f.Result, f.Text, f.Port, f.Length, f.LengthIsString)
			}
		})
	}
}

func TestParseStamp(t *testing.T) {
	tests := []struct {
		in          string
		k, seq, ts  int64
		ok          bool
		roundTrips  bool
		description string
	}{
		{"0:1:2", 0, 1, 2, true, true, "plain"},
		{"12:345:678901234567", 12, 345, 678901234567, true, true, "big"},
		{"", 0, 0, 0, false, false, "empty"},
		{"1:2", 0, 0, 0, false, false, "two parts"},
		{"1:2:3:4", 0, 0, 0, false, false, "four parts"},
		{"1::3", 0, 0, 0, false, false, "empty part"},
		{"-1:2:3", 0, 0, 0, false, false, "sign"},
		{"1:2:3x", 0, 0, 0, false, false, "junk"},
		{"1:2:9999999999999999999", 0, 0, 0, false, false, "overflow"},
	}
	for _, tt := range tests {
		k, seq, ts, ok := parseStamp([]byte(tt.in))
		if ok != tt.ok || k != tt.k || seq != tt.seq || ts != tt.ts {
			t.Errorf("%s: parseStamp(%q) = %d,%d,%d,%v", tt.description, tt.in, k, seq, ts, ok)
		}
		if tt.roundTrips {
			if got := string(appendStamp(nil, tt.k, tt.seq, tt.ts)); got != tt.in {
				t.Errorf("%s: appendStamp = %q, want %q", tt.description, got, tt.in)
			}
		}
	}
}

// FuzzFieldsParse: no input may panic, and whatever encoding/json reads
// as an object with a string cmd, Parse must read the same way.
func FuzzFieldsParse(f *testing.F) {
	for _, s := range []string{`{"cmd":"private_chat","text":"0:1:2"}`, `{"cmd":"a\"b"}`, `{"x":[{"y":"}"}],"cmd":"z"}`,
		`{`, `"`, `{"cmd":"\`, `{"port":1,"length":"2"}`, "{\"cmd\":\"\xff\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fl Fields
		err := fl.Parse(b)
		var obj map[string]json.RawMessage
		var cmd string
		if json.Unmarshal(b, &obj) != nil || json.Unmarshal(obj["cmd"], &cmd) != nil {
			return
		}
		// Duplicate keys: encoding/json keeps the last, as Parse does.
		if err != nil {
			t.Fatalf("Parse failed on valid JSON %q: %v", b, err)
		}
		// encoding/json turns invalid UTF-8 into U+FFFD; Parse keeps the
		// bytes, which can match no name the generator sends either way.
		if string(fl.Cmd) != cmd && utf8.Valid(b) {
			t.Fatalf("Parse cmd %q, encoding/json %q, input %q", fl.Cmd, cmd, b)
		}
	})
}
