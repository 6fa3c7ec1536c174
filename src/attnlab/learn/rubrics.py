"""The written prompts of ``attnlab practice --kind written``: question, model answer, and the claims checked.

Each prompt follows an item of the study guide (Practice: multi-head vs single-head, additive vs dot-product;
Build: when self- and cross-attention are used, one long-context efficiency idea). The claims restate the guide's
own table rows; patterns are regular expressions over the normalised answer (``claims.normalise``: lower case,
"doesn't" -> "does not"). A Link says *which subject* a predicate must be stated about, which is what tells a
right answer from one with the definitions swapped.
"""

from __future__ import annotations

from .claims import Claim, Idea, Link, Rubric

# --- additive vs dot-product ----------------------------------------------------------------------------------
ADD, DOT = "additive", "dot-product"
_FFN = (r"feed-?\s?forward|\bmlp\b|\btanh\b|neural (net|network)|(small|tiny|little|learned|learnt|one-layer|"
        r"two-layer|extra|separate|trainable|hidden) (\w+ ){0,2}(network|net|layer|scorer|scoring function)|"
        r"hidden layer|(uses?|using|with|through|via|runs?|passes \w+ through) (a|an) (\w+ ){0,2}network|"
        r"\bw_?v\b|learned (weight|parameter)s? (matri\w+ )?(for|to) (score|combine)")
_DOTSIM = (r"inner product|(dot|scalar) products? (of|between|with)|q ?\. ?k|\bq dot k\b|q ?k\^?t|\bqk\b|"
           r"multipl\w+ (the )?(query|queries|q) (vector )?(and|with|by) (the )?(key|keys|k)|similarity|"
           r"element-?wise products? .*sum")
_SCALE = r"sqrt|square root|scaled (down )?by|\bscal(e|es|ing) (it |them |the scores? )?(down )?by|divid\w* by"
_FAST = (r"\bfast|quick|efficient|cheap|(matrix|matrices) (multiplication|multiply|product|operation)|matmul|"
         r"\bgpus?\b|\btpus?\b|hardware|optimi[sz]ed (blas|kernel|librar)|less (compute|computation)")
_SLOW = r"\bslow|expensive|costly|more (compute|computation|parameters|operations|work)|less efficient|heavier"
_OLD = (r"\brnns?\b|recurrent|seq2seq|sequence-to-sequence|encoder-decoder|early|earlier|older|first (used|"
        r"introduced|proposed)|2014|2015|machine translation|lstm|flexib|different (sizes|dimensions|lengths)|"
        r"(query|queries) and (key|keys) (of|with|have) different")
_MODERN = r"transformers?\b|standard|vaswani|modern|today|most (models|llms)|\bllms?\b|\bbert\b|\bgpt"

ADDITIVE = Rubric(
    "additive",
    "Compare additive attention and dot-product attention in one paragraph.",
    "Additive (Bahdanau) attention scores a query and a key with a small feed-forward network, "
    "w_v . tanh(W_q q + W_k k); it works when query and key sizes differ and was used in early RNN "
    "encoder-decoders, but it is slower. Dot-product attention scores with q . k, scaled by 1/sqrt(d_k) so the "
    "softmax does not saturate; it is one matrix multiplication, fast on modern hardware, and the standard in "
    "transformers.",
    {ADD: r"\badditive\b|\bbahdanau'?s?\b|\bconcat attention",
     DOT: r"(scaled )?dot-?\s?products?( attention)?|multiplicative( attention)?|\bluong'?s?\b|\bdot attention"},
    [Idea("additive vs dot-product", [
        Claim("ffn", "additive attention scores with a small learned feed-forward network (tanh)",
              [Link((ADD,), _FFN)], [Link((DOT,), _FFN)]),
        Claim("dot", "dot-product attention scores by the dot product (similarity) of query and key",
              [Link((DOT,), _DOTSIM)], [Link((ADD,), r"inner product|(dot|scalar) products? (of|between)|q ?\. ?k|"
                                                 r"multipl\w+ (the )?(query|queries|q) (and|with|by) (the )?"
                                                 r"(key|keys|k)")]),
        Claim("scale", "dot-product scores are scaled by 1/sqrt(d_k)",
              [Link((DOT,), _SCALE)], [Link((ADD,), r"sqrt|square root")]),
        Claim("speed", "dot-product is faster: one matrix multiplication on modern hardware (additive is slower)",
              [Link((DOT,), _FAST), Link((ADD,), _SLOW)], [Link((ADD,), _FAST), Link((DOT,), _SLOW)]),
        Claim("history", "additive comes from early RNN encoder-decoders (and allows different sizes); "
                         "dot-product is the transformer standard",
              [Link((ADD,), _OLD), Link((DOT,), _MODERN)], [Link((DOT,), r"\brnns?\b|recurrent|bahdanau"),
                                                            Link((ADD,), r"transformers?\b|standard")]),
    ], need=4)])

# --- multi-head vs single-head --------------------------------------------------------------------------------
MULTI, SINGLE, OUT = "multi-head", "single-head", "outputs"
MULTIHEAD = Rubric(
    "multihead",
    "Explain in your own words how multi-head attention differs from single-head attention.",
    "Multi-head attention runs several attention operations in parallel, each with its own learned projections "
    "into a smaller subspace (d_model / H per head). Each head can then specialise in a different relationship "
    "(local syntax, long-range dependencies, coreference), where a single head must squeeze everything into one "
    "softmax pattern. The heads' outputs are concatenated and projected back to d_model by the output projection, "
    "at about the same cost as one full-width head.",
    {MULTI: r"multi-?\s?head(ed)?( self-?)?( attention)?|\bmha\b|(multiple|several|many|h|different|separate|"
            r"parallel|the|each|every|all|individual|other|these|some) (attention )?heads?|\bheads?\b|\bone head "
            r"(might|may|could)|another( one| head)?\b",
     SINGLE: r"single-?\s?head(ed)?( self-?)?( attention)?|(just|only) one head|one head only|with one head|"
             r"a single (attention|head)|single attention|one attention head|(standard|vanilla|regular|ordinary|"
             r"plain) attention|one-head|\b(one|a) head (can|could) only",
     OUT: r"(the |their |all )?(heads'? |head )?(outputs?|results)( of (the |all |each |every )?heads?)?"},
    [Idea("multi-head vs single-head", [
        Claim("parallel", "multi-head attention runs several attention heads in parallel",
              [Link((MULTI,), r"parallel|simultaneous|at the same time|at once|side by side|(several|multiple|many|"
                              r"h) (\w+ ){0,2}(heads|attentions|operations|functions|mechanisms|times)|splits? "
                              r"(\w+ ){0,3}into (\w+ ){0,2}heads")],
              [Link((SINGLE,), r"parallel|(has|have|uses?|runs?|with) (\w+ ){0,1}(several|multiple|many) "
                               r"(\w+ ){0,1}heads"),
               Link((MULTI,), r"(has|have|uses?|with) (only |just )?(one|a single) head\b"),
               Link((MULTI,), r"one after (the )?other|sequential")]),
        Claim("subspace", "each head attends in its own learned subspace (its own projections, d_model / H)",
              [Link((MULTI,), r"subspace|own (\w+ ){0,2}(projection|weight|matri|q|quer|space|represent)|"
                              r"(different|separate|distinct|independent) (\w+ ){0,2}(projection|weight|matri|"
                              r"subspace|space|represent)|lower-?\s?dim|smaller (\w+ ){0,2}(dimension|space|size)|"
                              r"d_?model ?/ ?h|d ?/ ?h\b|(split|divid)\w* (\w+ ){0,4}(dimension|embedding|d_?model|"
                              r"vector|space)")],
              [Link((MULTI,), r"(same|identical|shared?) (\w+ ){0,2}(projection|weight|subspace|space)|full "
                              r"(d_?model|dimension|width)"),
               Link((SINGLE,), r"subspace")]),
        Claim("specialise", "different heads can specialise in different relationships or patterns",
              [Link((MULTI,), r"speciali[sz]|(different|various|several|multiple|many|other) (\w+ ){0,2}(relation|"
                              r"pattern|kind|type|aspect|feature|thing|dependenc|position|part|word|token|"
                              r"information)|syntax|syntactic|corefer|long-?\s?range|local|\bfocus\w* on "
                              r"(\w+ ){0,2}(different|other|separate)|another (might|may|can|could|one)|"
                              r"\b(while|and|whereas) another (\w+ ){0,1}(tracks?|looks?|attends?|focus\w*|"
                              r"captures?|follows?|handles?|learns?)")],
              [Link((MULTI,), r"(all|every) (\w+ ){0,2}(learn|learns|see|sees|capture|captures) the same|"
                              r"(identical|same) pattern"),
               Link((SINGLE,), r"speciali[sz]|(different|several|multiple) (\w+ ){0,2}(relation|pattern|"
                               r"kind|aspect)s? at once")]),
        Claim("concat", "the heads' outputs are concatenated, then the output projection mixes them",
              [Link((MULTI, OUT), r"(concat\w*|stack\w*|join\w*|glued)(,? (and|then))? (\w+ ){0,8}(project\w*|w_?o\b|linear|"
                                  r"output (matrix|layer)|mix\w*|dense layer)")],
              [Link((MULTI, OUT), r"(are|is|get|gets|then) (simply )?(averag|summ|added)\w*")]),
        Claim("single", "a single head has one softmax pattern per query, an average of everything it needs",
              [Link((SINGLE,), r"(one|single|only one|a single) (\w+ ){0,2}(pattern|distribution|softmax|weighting|"
                               r"set of (attention )?weights|way|kind|relation|thing|view|representation|"
                               r"perspective|type)|averag|limited|squeez|bottleneck|(must|has to|have to) "
                               r"(\w+ ){0,2}(mix|compromise|combine|capture everything)|blur|cannot (\w+ ){0,2}"
                               r"(several|multiple|different)|everything into one")],
              [Link((MULTI,), r"only one (pattern|distribution|softmax)|(one|a single) (softmax )?(pattern|"
                              r"distribution) for everything")]),
    ], need=4)])

# --- self- vs cross-attention ---------------------------------------------------------------------------------
SELF, CROSS = "self-attention", "cross-attention"
_SAME = (r"(the same|a single|its own|that same|one and the same) (\w+ ){0,1}(sequence|sentence|input|text|"
         r"tokens|set of tokens)|\bitself\b|each other|(every|all) other (token|word|position)s?|"
         r"within (a|the|one|its) (\w+ )?(sequence|sentence|input)|(the )?rest of (the |that |its |this )?(sequence|"
         r"sentence|input)|(every|each|all) (other )?(word|token|position)s? (of|in) (the|a|its|that|this) (same )?"
         r"(sentence|sequence|input)|(q|queries|quer\w+), (k|keys),? and (v|values) "
         r"(all )?(come |are )?(from|computed from) (the )?same|same source")
_OTHER = (r"(another|a different|a second|other|separate|two|different) (\w+ ){0,1}(sequence|sentence|input|source|"
          r"modality|set of tokens|text|one)|(keys|k) and (values|v) (\w+ ){0,2}(from|of|are) (the )?(encoder|source|"
          r"other|another|a different|image|audio)|from the encoder|encoder'?s? (\w+ )?(outputs?|states|"
          r"representations|hidden states|memory)|(queries|q) (\w+ ){0,2}from (the )?(decoder|target)|"
          r"attends? (\w+ ){0,2}(to|over) (the )?(encoder|source|input sentence|image|audio|other sequence)")
_USE_SELF = (r"\bbert\b|\bgpt\w*|encoder(-only)?( layers?| stack| blocks?| models?)|decoder-only|"
             r"language models?|\bllms?\b|every (transformer )?(layer|block)|each (transformer )?(layer|block)|"
             r"within (the |an? )?(encoder|decoder)|in (the |an? )?(encoder|decoder)\b|classification|understanding|"
             r"transformer (layers|blocks|encoders?)|(build|builds|building) (\w+ ){0,2}(context|representation)|"
             r"contextual")
_USE_CROSS = (r"encoder-?\s?decoder|translation|translat\w+|\bt5\b|\bbart\b|seq2seq|sequence-to-sequence|whisper|"
              r"speech|caption\w*|summari[sz]\w*|multi-?modal|text-to-image|image|question answering|retrieval|"
              r"diffusion|decoder (\w+ ){0,1}(looks|attends|reads|consults)|conditioned on|condition\w* on")
SELFCROSS = Rubric(
    "selfcross",
    "Write a short note on when self-attention and cross-attention are used.",
    "Self-attention lets a sequence attend to itself: queries, keys and values all come from the same tokens. It "
    "is used inside every transformer layer to build context: in encoders like BERT, and (with a causal mask) in "
    "decoder-only language models like GPT. Cross-attention lets one sequence attend to a different one: queries "
    "come from the decoder (the target), keys and values from the encoder's outputs (the source). It is used in "
    "encoder-decoder models such as translation models, T5 or Whisper, where the output must consult the input.",
    {SELF: r"self-?\s?attention|self-?\s?attn|self-attend\w*|\bself(?=-? (and|or|vs|versus) cross)|"
           r"\bself\b(?=-attention)",
     CROSS: r"cross-?\s?attention|cross-?\s?attn|cross-attend\w*|encoder-decoder attention|"
            r"\bcross\b(?=-? (and|or|vs) self)"},
    [Idea("self- and cross-attention", [
        Claim("self-what", "self-attention: a sequence attends to itself (queries, keys, values from the same "
                           "tokens)",
              [Link((SELF,), _SAME)], [Link((CROSS,), _SAME), Link((SELF,), _OTHER)]),
        Claim("cross-what", "cross-attention: queries from one sequence (decoder/target), keys and values from "
                            "another (encoder/source)",
              [Link((CROSS,), _OTHER)], [Link((SELF,), r"(another|a different|a second|two) (sequence|sentence|"
                                                       r"input)|keys and values (come )?from (the )?encoder"),
                                         Link((CROSS,), r"\bitself\b|(the )?same (sequence|sentence|input)")]),
        Claim("self-when", "self-attention is used inside encoders (BERT) and decoder-only models (GPT), every layer",
              [Link((SELF,), _USE_SELF)], [Link((CROSS,), r"\bbert\b|\bgpt\w*|decoder-only|encoder-only")]),
        Claim("cross-when", "cross-attention is used in encoder-decoder models (translation, T5, Whisper, "
                            "captioning)",
              [Link((CROSS,), _USE_CROSS)], [Link((SELF,), r"only (in|for) (translation|encoder-decoder)")]),
    ], need=3)])

# --- one long-context efficiency idea ---------------------------------------------------------------------------
SPARSE, FLASH, KV, LINEAR, CACHE = ("sparse/local attention", "FlashAttention", "MQA/GQA", "linear attention",
                                    "KV cache")
_ALL = (SPARSE, FLASH, KV, LINEAR, CACHE)
_NOT = lambda idea: tuple(s for s in _ALL if s != idea)   # noqa: E731  (subjects other than ``idea``)
_SHARE_KV = (r"shar\w* (\w+ ){0,4}(key|kv|k/v|k and v)|(use|uses|using|reuse|reuses) (\w+ ){0,1}(same|common|one|a "
             r"single) (\w+ ){0,1}(key|kv|k/v|k and v)|(one|a single|single|fewer|g|a few|groups? of|shared) "
             r"(set of )?(key|kv|k/v|k and v|key-value|key/value)( and value)?[- ]?(heads?|projections?|sets?)|"
             r"group\w* (\w+ ){0,2}query heads|query heads (\w+ ){0,2}(share|grouped|in groups)")
_TILES = (r"\btil(e|es|ed|ing)\b|\bblocks?\b|blockwise|block-by-block|chunks?|\bsram\b|on-chip|shared memory|"
          r"fast memory|cache-friendly")
EFFICIENCY = Rubric(
    "efficiency",
    "Summarise one long-context efficiency idea (for example sparse or sliding-window attention, FlashAttention, "
    "multi-query or grouped-query attention).",
    "FlashAttention computes exact attention without ever materialising the n x n score matrix: it loads Q, K and "
    "V in tiles into fast on-chip memory (SRAM) and keeps a running maximum and sum per query row (the online "
    "softmax), rescaling the partial output as each key block arrives. The result is the same as standard "
    "attention, the FLOPs are unchanged, but memory grows linearly in n and far less data moves to and from HBM, "
    "so it is faster at long context.",
    {SPARSE: r"(sparse|local|sliding-?\s?window|windowed|banded|strided|dilated|block-sparse)( self)?( attention|"
             r"attn| patterns?)?|\blongformer\b|\bbigbird\b|big bird|\bmistral'?s? sliding",
     FLASH: r"flash-?\s?attention(-?\s?[123])?|\bflash\b|\bflashattn\b|flash attention",
     KV: r"multi-?\s?query( attention)?|grouped-?\s?query( attention)?|\bmqa\b|\bgqa\b",
     LINEAR: r"linear (attention|transformers?)|\bperformers?\b|kerneli[sz]ed attention|linformer",
     CACHE: r"\b(kv|k/v|key-?value|key/value)[- ]?cach\w*|cach\w* (of )?(the )?(past |previous )?keys and values"},
    [Idea(SPARSE, [
        Claim("sparse-subset", "sparse/local attention: each token attends to only a subset (a window of "
                               "neighbours), not to every token",
              [Link((SPARSE,), r"only (\w+ ){0,3}(few|subset|some|nearby|neighbou?r|local|window|previous|last|"
                               r"w\b|k\b|fixed)|(fixed|local|small|limited) (\w+ ){0,1}(window|number|set|"
                               r"neighbou?rhood)|nearby|neighbou?r|within (a |the |its )?(\w+ )?window|not (to )?"
                               r"(every|all)|subset|w (previous|nearest|closest|neighbou?ring)|few other")],
              [Link((SPARSE,), r"(attends?|looks?) (\w+ ){0,2}(every|all) (other )?tokens?")]),
        Claim("sparse-cost", "its cost grows like n * w (linear in n) instead of n^2",
              [Link((SPARSE,), r"\blinear|o\(n ?[*.x]? ?w\)|o\(n\)|o\(nw\)|n ?\* ?w|n times w|instead of "
                               r"(\w+ ){0,2}(quadratic|n\^?2|n squared)|sub-?quadratic|not quadratic|"
                               r"(reduc|cut|lower|sav)\w* (\w+ ){0,3}(cost|compute|computation|memory|flops|work)|"
                               r"cheaper|less (compute|memory|work)")],
              [Link((SPARSE,), r"(is )?still quadratic|same cost")]),
        Claim("sparse-tradeoff", "the trade-off: distant tokens are reached only through global tokens or by "
                                 "stacking layers (an approximation of full attention)",
              [Link((SPARSE,), r"global (tokens?|attention)|long-?\s?range|receptive field|stack\w*|(more|several|"
                               r"deeper|many) layers|approximat\w*|(lose|loses|miss|misses|lost|cannot see) "
                               r"(\w+ ){0,3}(distant|far|long|context|information|tokens)|trade-?\s?off|dilat\w*|"
                               r"strid\w*|information (can )?(flow|spread|propagat)")]),
    ], need=2),
     Idea(FLASH, [
        Claim("flash-tiles", "FlashAttention processes Q, K, V in tiles (blocks) held in fast on-chip memory (SRAM)",
              [Link((FLASH,), _TILES)], [Link(_NOT(FLASH), r"\bsram\b|on-chip")]),
        Claim("flash-memory", "it never materialises the n x n score matrix: memory linear in n, less HBM traffic",
              [Link((FLASH,), r"(never|not|without|avoid\w*|no need to|instead of) (\w+ ){0,3}(materiali[sz]|stor|"
                              r"writ|build|form|keep|hold|creat|comput)\w* (\w+ ){0,4}(matrix|n ?x ?n|n\^?2|"
                              r"scores|attention weights)|memory (\w+ ){0,2}linear|linear (\w+ ){0,2}memory|"
                              r"o\(n\) memory|(less|lower|reduc\w*|sav\w*) (\w+ ){0,2}memory|"
                              r"(less|fewer|reduc\w*|minimi[sz]\w*) (\w+ ){0,3}(hbm|memory traffic|reads|writes)|"
                              r"hbm (traffic|reads|accesses|bandwidth)|(matrix|n ?x ?n|scores) (\w+ ){0,2}(is |are )?"
                              r"(never|not) (\w+ ){0,1}(stored|materiali[sz]ed|written|built|formed|kept)|memory "
                              r"(traffic|movement|reads|bandwidth|transfers?)|io-?\s?aware|(reads|writes) (\w+ )"
                              r"{0,2}(less|fewer)|data movement")],
              [Link((FLASH,), r"(stores?|materiali[sz]es?|writes?|builds?|keeps?) (\w+ ){0,2}(full |whole |entire )?"
                              r"(n ?x ?n|score|attention) matrix")]),
        Claim("flash-exact", "the result is exact (the same as standard attention), kept right by an online "
                             "softmax: running max and sum, rescaling",
              [Link((FLASH,), r"\bexact|same (\w+ ){0,1}(result|output|answer|numbers|values)|not (an? )?"
                              r"approximat\w*|no approximation|online softmax|running (max|maximum|sum)|rescal\w*|"
                              r"log-?\s?sum-?\s?exp|recomput\w*|identical")],
              [Link((FLASH,), r"approximat\w*|(lower|reduc\w*|fewer|less) (\w+ ){0,1}(flops|computation|compute)")]),
    ], need=2),
     Idea(KV, [
        Claim("kv-share", "MQA/GQA: several query heads share key/value heads (MQA one, GQA one per group)",
              [Link((KV,), _SHARE_KV)], [Link(_NOT(KV), _SHARE_KV),
                                         Link((KV,), r"(fewer|one|a single|shar\w*) (\w+ ){0,1}query heads? "
                                                     r"(and|but) (\w+ ){0,2}(many|several|multiple) (key|kv)")]),
        Claim("kv-cache", "it shrinks the KV cache (memory and bandwidth when decoding) by the number of query "
                          "heads per key/value head",
              [Link((KV, CACHE), r"(smaller|reduc\w*|shrink\w*|less|cut\w*|fewer|lower\w*|sav\w*|divid\w*) (\w+ ){0,4}"
                           r"(kv|cache|memory|bandwidth)|(kv|key-?value|key/value) cache (\w+ ){0,2}(smaller|"
                           r"reduced|shrinks|is cut)|memory bandwidth|h ?/ ?g|factor of")],
              [Link((KV,), r"(reduc\w*|lower\w*) (\w+ ){0,2}(flops|compute|computation)|linear (time|cost|"
                           r"complexity)")]),
        Claim("kv-tradeoff", "the trade-off: faster decoding for a small quality cost (GQA sits between MHA and "
                             "MQA; used in Llama 2 and later)",
              [Link((KV, CACHE), r"quality|accuracy|middle ground|between (\w+ ){0,2}(mha|multi-head)|compromise|"
                           r"\bllama|\bmistral|faster (\w+ ){0,1}(decod|inference|generation)|trade-?\s?off|"
                           r"(speed|speeds) up (\w+ ){0,2}(decod|inference|generation)|"
                           r"(decod\w*|inference|generation) (\w+ ){0,2}faster")]),
    ], need=2),
     Idea(LINEAR, [
        Claim("linear-kernel", "linear attention replaces the softmax by a feature map phi(q) . phi(k) (a kernel)",
              [Link((LINEAR,), r"feature maps?|kernel|\bphi\b|(replac\w*|drop\w*|remov\w*|without) (\w+ ){0,2}"
                               r"softmax|random features")]),
        Claim("linear-order", "it multiplies phi(K)^T V first (associativity), so the cost is linear in n",
              [Link((LINEAR,), r"associativ\w*|reorder\w*|k\^?t ?v|order of (\w+ ){0,2}(multiplication|product)|"
                               r"\blinear (in|cost|time|complexity|with)|o\(n\)|instead of (\w+ ){0,1}quadratic|"
                               r"never (\w+ ){0,2}n ?x ?n")]),
        Claim("linear-approx", "it is an approximation: quality can drop compared with softmax attention",
              [Link((LINEAR,), r"approximat\w*|quality|not exact|worse|accuracy|less (accurate|expressive)")],
              [Link((LINEAR,), r"\bexact\b|same (result|output)|identical")]),
    ], need=2),
     Idea(CACHE, [
        Claim("cache-store", "the KV cache keeps the keys and values of the tokens already processed",
              [Link((CACHE,), r"(stor|keep|sav|cach|remember|reus)\w* (\w+ ){0,3}(keys?|k) and (values?|v)|"
                              r"(keys?|k) and (values?|v) (\w+ ){0,3}(stored|kept|saved|cached|reused)|"
                              r"(past|previous|earlier|old|prefix) tokens")]),
        Claim("cache-no-recompute", "each new token computes only its own query, key and value: the prefix is "
                                    "not recomputed, so a step costs O(n) instead of O(n^2)",
              [Link((CACHE,), r"(no need to|not|never|without|avoid\w*) (\w+ ){0,2}recomput\w*|recomput\w*|"
                              r"only (\w+ ){0,3}(new|current|last|its own) (token|query|position)|"
                              r"(linear|o\(n\)) (\w+ ){0,2}(instead of|rather than|not) (\w+ ){0,1}quadratic|"
                              r"one (new )?(query|row) (per|at a) (step|time)")]),
        Claim("cache-memory", "the trade-off: the cache grows with context length (layers x heads x n), which "
                              "is what MQA/GQA shrink",
              [Link((CACHE,), r"grows?|memory|\bgb\b|gib|large|big|\bmqa\b|\bgqa\b|bandwidth|per token")]),
    ], need=2)])

RUBRICS = {r.key: r for r in (MULTIHEAD, ADDITIVE, SELFCROSS, EFFICIENCY)}
