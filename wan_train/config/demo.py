"""The demo shard folders the recipes name (data/demo, data/mascot, ...): train.py generates each on first use
with data_tools.make_demo, so a config may name them before they exist.

folder -> (make_demo seed, clips, options): held-out clips use another seed; data=mascot is a character's,
data=shapes names its subjects (reference-to-video), one or two shapes per clip; data=stories cuts each clip into
two captioned shots (multi-shot); data=demo_large has larger shapes (recipe=quickstart_base).
Options are make_demo's keyword arguments (defaults: 256x144, 49 frames). AV_DEMO: the audio-video demo's
folders, made with data_tools.make_av_demo (folder -> (seed, clips)): the whole screen flashing (scene "screen"),
each flash with its beep."""

# data=demo_large (recipe=quickstart_base): shapes 1.5 x the size, 1024 clips drawn at the size it trains at (176x96,
# every 4th portrait), 25 frames each (1.5 s), trained on 1 s windows
LARGE = {"shape_scale": 1.5, "width": 176, "height": 96, "frames": 25}
DEMO = {"data/demo": (0, 64, {}), "data/demo_val": (1, 8, {}),
        "data/mascot": (0, 32, {"character": "zxq mascot"}), "data/mascot_val": (1, 8, {"character": "zxq mascot"}),
        "data/shapes": (0, 64, {"subjects": True}), "data/shapes_multi": (2, 32, {"subjects": True, "multi": True}),
        "data/shapes_val": (1, 8, {"subjects": True}),
        "data/stories": (0, 64, {"shots": True}), "data/stories_val": (1, 8, {"shots": True}),
        "data/demo_large_96p": (0, 1024, LARGE), "data/demo_large_96p_val": (1, 8, LARGE)}
AV_DEMO = {"data/av_demo": (0, 256), "data/av_demo_val": (1, 32)}
PENDING = (*DEMO, *AV_DEMO)  # every folder train.py makes on first use
