"""The LLM in other runtimes: a GGUF of the test models' weights (gguf_file.py) and answers through llama.cpp (llama_cpp.py).

Both need the `llama` extra (`pip install -e ".[llama]"`: the gguf package and llama-cpp-python, which compiles
llama.cpp on install); both import it lazily, so the rest of the package works without it.
"""
