"""The report's fixed text: the threat model and what each section measures (Markdown, cited)."""

from __future__ import annotations

__all__ = ["THREAT_MODEL", "SECTION_TEXT"]

THREAT_MODEL = [
    "## Threat model",
    "",
    "- **Client**: owns the images and, for keyed schemes (`pixel`, `pixel-np`, `etc`, `le`, `ele`, `vit`, "
    "`block`, and chains ending in `pixel`), the key. "
    "It encrypts before anything leaves its hands.",
    "- **Server / model owner**: receives encrypted images only, trains or serves the model. It is the "
    "adversary we measure: honest-but-curious, it sees every ciphertext, knows every scheme's code "
    "(Kerckhoffs), and may obtain some plain images (public datasets, leaked pairs) or submit images to be "
    "encrypted (a chosen-plaintext oracle: e.g. a client app that encrypts whatever the camera sees).",
    "- **Keyed, fixed-key schemes** (`pixel`, `pixel-np`, `etc`, `le`, `ele`, `vit`, `block`) apply the *same* "
    "rearrangement to every image. They are substitution-free ciphers: each output value is one input value. "
    "They stop a human glancing at one image; they do **not** stop anyone with an encryption oracle "
    "(a handful of crafted images recover the whole key), a few known pairs, or **the ciphertexts alone**: "
    "a server that trains on a few hundred to a few thousand images under one key recovers the block "
    "schemes' keys (`etc`, `block`: a jigsaw over all ciphertexts; `vit`: its in-block shuffle, then the jigsaw; "
    "`le`/`ele`: their nibble shuffles matched to public image statistics) and most of `pixel`'s layout "
    "(section ciphertext-only). Once the key is recovered, every past and future image is readable. Chains "
    "such as `visualmixer-seed+pixel` give up their keyed step the same ways, up to the per-image step's cells.",
    "- **Keyless per-image schemes** (`patch`, `mix`, `visualmixer`) use fresh randomness per image, so "
    "there is no key to recover; but the scheme is public, so anybody can make unlimited training pairs "
    "and learn to invert what the scheme leaves (patch contents, local statistics, window means). "
    "`patch` keeps every patch intact: a jigsaw solver reassembles it.",
    "- **A keyed model is the key.** A keyed CNN, keyed detector or keyed ViT (and a checkpoint saved with key "
    "material) stores the key's permutations as buffers; anyone holding it reads the key off them, or, for the "
    "CNNs and the detector, recovers it by running the model on three probe images, in every mode. Only the key holder, or a party already trusted with the plain "
    "images, may hold a keyed model; serving one on an untrusted server gives that server the key. "
    "`keyveil convert` and `save_keyed` write no key material by default (plain weights, settings and the key's "
    "fingerprint; the key re-attaches on load); `--with-key-material` / `include_key_material=True` writes a "
    "key-equivalent file, with mode 0600 like a key file.",
    "- **Obfuscations that are not ciphers** (`noise`, `instahide`): additive noise leaves the image "
    "in place; InstaHide's mixtures fall to Carlini et al.'s attack once the attacker sees each private image "
    "in several encodings, as a server does over training epochs (section instahide).",
    "- **Re-identification** is the question a user asks (\"can someone tell who is in my image?\"): every "
    "scheme is measured on AT&T faces against a glance, an adapted attacker, a learned inversion, the "
    "ciphertext-only chain (recover what the 400 encrypted faces give away, then recognize) and key recovery "
    "(section reidentify); the weakest of these bounds the scheme's privacy.",
    "- **No scheme protects membership**: a model trained on encrypted data over-fits its training set as "
    "much as a plain one, so loss-threshold membership inference works the same.",
    "- Out of scope: side channels, the security of the machine holding the key, and formal privacy "
    "guarantees (none of these schemes gives one; use DP-SGD for that).",
    "",
]

SECTION_TEXT = {
    "reidentify": "Can someone tell *who* is in an encrypted photo? AT&T faces (40 people, 112×92): the attacker "
                  "holds plain photos 1–5 of everyone (the gallery); the victims' photos 6–10 are encrypted with "
                  "the scheme's defaults (padded with zero columns where a block or patch size needs it). Top-1 "
                  "identification, chance 2.5 %; every figure is the best over two recognizers (eigenfaces: "
                  "PCA + nearest neighbour; a small CNN trained on the gallery) and over the views an attacker "
                  "tries (no processing, average pooling by 2–16, Gaussian blur σ 1–8). Variants: *glance* "
                  "(recognizers built on the plain gallery), *adapted* (the attacker scrambles its own gallery "
                  "with the public scheme — for keyed schemes through the encryption oracle — and matches in the "
                  "scrambled domain), *inverted* (a U-Net trained on self-made or oracle pairs of the gallery "
                  "undoes what it can), *key-recovery* (keyed schemes: chosen-plaintext recovers the key, the "
                  "probes are decrypted). A setting is as private as its worst variant. Attack `reidentify` "
                  "(`keyveil attack reidentify --scheme S`); the privacy–utility frontier over every scheme's "
                  "strength is `keyveil experiment frontier` (RESULTS.md). A fixed permutation is an isometry, "
                  "so with an oracle a keyed scheme's adapted attacker matches as well as on plain photos.",
    "chosen-plaintext": "Crafted images whose values spell each position's index in base 256 (base 16 per "
                        "nibble for LE/ELE), submitted to the encryption oracle; one black image more reveals "
                        "negative–positive flips when the decoded indices are not a permutation "
                        "(Jolfaei et al., IEEE TIFS 2016). The attack is generic: it treats the scheme as an "
                        "unknown permutation of the C·H·W values, so ⌈log_256(3·H·W)⌉ images; with "
                        "`spatial=True` (pixel's channel-shared permutation) ⌈log_256(H·W)⌉. The attack CPU "
                        "time includes the oracle encrypting the crafted images (and the scheme deriving its "
                        "permutation on first use).",
    "known-plaintext": "Pairs (plain, encrypted) under one `pixel` key; each encrypted position's values "
                       "across the pairs and channels are matched with the plain positions' "
                       "(Li et al., Signal Processing: Image Communication 2008). 'unique' counts positions "
                       "whose value vector occurs once; ties (flat backgrounds) are guessed. "
                       "Fashion-MNIST is 1×28×28 with large black backgrounds; photos are 3×224×224 "
                       "from `skimage.data`.",
    "ciphertext-only": "Statistics of the encrypted positions across 10,000 Fashion-MNIST training images under "
                       "one `pixel` (or `pixel-np`) key: partial correlations (the regularized inverse of the "
                       "correlation matrix) single out grid neighbours; the grid is grown greedily from them "
                       "(1×1 jigsaw pieces scored by a neighbour template), re-centred, then refined by batched "
                       "annealing of the template plus the images' smoothness (20 s CPU). For `pixel-np` the flips "
                       "come from the signs of the partial correlations (Z2 synchronization) and the smoothness of "
                       "each position against its recovered neighbours. Scored on 500 test images. Statistics "
                       "cannot tell left from right, so SSIM is reported for the best of the 8 grid symmetries (what "
                       "a viewer picks at a glance; 'raw' without). The annealing is time-bounded, so figures vary "
                       "slightly between runs and machines.",
    "jigsaw": "Greedy jigsaw solver with a gradient-prediction edge compatibility, trying all 8 rotations/"
              "flips, negation and 6 channel orders per piece for EtC (Chuman, Kurihara, Kiya 2017). "
              "Scores are the best over the global symmetries the solver cannot tell apart; 'direct' = "
              "blocks in their place, 'neighbour' = adjacent pairs rejoined (both by block content). "
              "'holds' means *this* simple greedy solver failed, not that the scheme is safe: published "
              "solvers (loop constraints, genetic search) do better, above all on larger images with more "
              "texture per block.",
    "learned-inversion": "A two-level U-Net (width 8) trained on (encrypted, plain) pairs: for keyless schemes "
                         "the attacker makes them itself with the public scheme code and fresh randomness per "
                         "epoch; for keyed schemes (and compositions with a keyed step) it holds leaked pairs "
                         "under the victims' key (the row says how many). Scored on held-out images "
                         "(Fashion-MNIST test set; AT&T/ORL faces of people 36–40, never seen in training, "
                         "centre-cropped to 96×80). Baselines: the SSIM of the encrypted image itself, and of "
                         "the attacker's mean training image (what a network that learned nothing outputs). "
                         "Rows marked 'perceptual' or 'GAN' train the same U-Net with L1 plus features of an "
                         "autoencoder the attacker trained on its plain images, or plus a conditional PatchGAN "
                         "(pix2pix; Ito et al.'s GAN inversion). LPIPS is not reported: `lpips`, `piq` and "
                         "`piqa` download their backbone weights at first use (no network here).",
    "key-from-model": "Who must not hold a keyed model: anyone who must not read the client's images. A keyed CNN "
                      "(`keyveil.models.keyed`) runs the plain weights on scrambled maps, so it stores where "
                      "every pixel went; the keyed model, or a checkpoint saved with "
                      "`save_keyed(..., include_key_material=True)`, *is* the key. Only the key holder, or a party "
                      "already trusted with the plain images, may hold one; serving the keyed model on an "
                      "untrusted server gives that server the key, and with it every past and future image. "
                      "Keep keyed models on the client side; hand out checkpoints saved with `save_keyed`'s "
                      "default (plain weights and the key's fingerprint only: the attack finds nothing in them, "
                      "and they need the key to load). Attack `key-from-model` (`keyveil.attacks.KeyFromModel`) "
                      "on the victim's keyed small CNN (random weights: the attack uses no trained value): "
                      "'buffers' reads the un-scramble permutation (input and "
                      "features modes) or rebuilds the layout from the first deformable convolution's tap table "
                      "(deformable mode: neighbouring taps are neighbouring pixels); 'probe' reads no buffer: "
                      "it runs the model on ⌈log_256(H·W+1)⌉ images spelling each scrambled position plus one "
                      "black image and solves the first convolution's linear response for its taps, using only "
                      "the weights and activations that anyone running the model has. A purely remote attacker "
                      "that sees only logits is not covered. The checkpoint rows attack the file itself "
                      "(buffers) or the model `load_keyed` builds from it (probe). The attack CPU time includes "
                      "decrypting the test images.",
    "instahide": "Carlini et al., \"Is private learning possible with instance encoding?\" (S&P 2021), on "
                 "InstaHide (inside-dataset: each encoding mixes k private faces with coefficients ≤ 0.65 and a "
                 "random sign per value). The server sees what training shows it: the 200 private faces (AT&T "
                 "photos 6–10) encoded once per epoch in shuffled batches of 50, for 10 epochs, so each face "
                 "is in about k·10 encodings. The attack (`keyveil.attacks.InstaHideAttack`, our reading): "
                 "|encoding| undoes the sign flip; each encoding's 10 most correlated |encodings| are "
                 "averaged (they mostly share a face with it, the rest averages out); neighbourhoods are "
                 "taken by cohesion and merged when they show the same face, at most 200; a per-pixel affine "
                 "map fitted on the attacker's own encodings of public faces (photos 1–5) undoes the fold "
                 "|2v − 1|. Each cluster is scored against the private face most of its encodings contain "
                 "(purity = that fraction; the share of faces recovered is the coverage): SSIM against "
                 "the encodings' own SSIM, and top-1 re-identification by the recognizers of section "
                 "reidentify built on the public photos (recovered images vs the encodings shown as images; "
                 "chance 2.5 %). The average public face already scores a fair SSIM against any private face "
                 "(shown as 'mean face'), so SSIM alone flatters; re-identification says whether the recovered "
                 "face is *that* person.",
    "membership": "For every scheme, a small CNN trained on Fashion-MNIST members as the server sees them "
                  "(encrypted once); loss-threshold attack (Yeom et al. 2018) on members vs as many test-set "
                  "non-members, queried encrypted the same way. AUC 0.5 = no leak; AUC and advantage carry a "
                  "bootstrap interval over the members and non-members. InstaHide mixes labels as it mixes "
                  "images: its model trains on the encodings with their mixed labels (soft cross-entropy, as "
                  "InstaHide's training does), a record's loss is taken against its mixed label, and its test "
                  "accuracy counts the label of each encoding's own image.",
}
