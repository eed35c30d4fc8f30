set -e
P=/tmp/pepnet-tp
S=/work/main/examples/kuairand/model.json
t() { local name=$1; shift; "$@" > /dev/null 2> log-$name.txt; echo "## $name: $*"; grep -E "^epoch|^working sets|streaming" log-$name.txt; }
t memory $P train --model $S --train train.csv --out m1 --epochs 1
t streamed $P train --model $S --train parts --out m2 --epochs 1 --shuffle-window 65536
t hashed-all $P train --model hashed.json --train train.csv --out m3 --epochs 1 --working-set 8192
t hashed-tiny $P train --model hashed.json --train train.csv --out m4 --epochs 1 --working-set 1100
t checkpoints $P train --model $S --train train.csv --out m5 --epochs 1 --checkpoints ck --checkpoint-every 10
t progressive $P train --model $S --train train.csv --out m6 --epochs 1 --progressive 10000
# drift: a stream of 4 files, 25 000 rows each, period 50 000 rows
mkdir -p drift
for i in 0 1 2 3; do $P gen-data --model $S --rows 25000 --output drift/part-$i.parquet --drift 50000 --start $((i * 25000)) --seed $((i + 1)) 2>/dev/null; done
# frozen: trained on the first file (2 epochs), then only scores
$P train --model $S --train drift/part-0.parquet --out frozen --epochs 2 2>/dev/null
echo "## frozen model trained on part-0, AUC click per later file"
for i in 1 2 3; do $P score --model frozen --input drift/part-$i.parquet --output fs-$i.csv --quiet 2>/dev/null; $P eval --model frozen --input drift/part-$i.parquet --scores fs-$i.csv --json fe-$i.json 2>/dev/null; python3 -c "
import json; r=json.load(open('fe-$i.json')); print('part-$i', ' '.join('%s %.4f' % (x['task'], x['auc']) for x in r if x['domain']=='all'))"; done
echo "## online: progressive over the stream, in order (no shuffle), windows of 25000"
$P train --model $S --train drift --out online --epochs 1 --no-shuffle --progressive 25000 2>&1 >/dev/null | grep -E "^window" | sed -E 's/GAUC [0-9.-]+//g'
